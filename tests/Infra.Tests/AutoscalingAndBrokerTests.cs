using System.Text.Json.Nodes;
using EventPipeline.Infra.Tests.Support;
using EventPipeline.Shared;

namespace EventPipeline.Infra.Tests;

public class AutoscalingAndBrokerTests
{
    private static Rendered Prod => Manifests.Render("overlays/prod");

    [Fact]
    public void Keda_scales_worker_cpu_on_the_lag_of_the_real_stream_and_group()
    {
        var scaled = Prod.Get("ScaledObject", "worker-cpu");
        AssertSaneBounds(scaled, "worker-cpu");
        var trigger = Assert.Single(scaled["spec"]!["triggers"]!.AsArray())!;
        Assert.Equal("redis-streams", (string?)trigger["type"]);
        var metadata = Rendered.StringMap(trigger["metadata"]);
        Assert.Equal(CpuLaneStreams.Stream.ToString(), metadata["stream"]);
        Assert.Equal(CpuLaneStreams.Group, metadata["consumerGroup"]);
        Assert.True(int.Parse(metadata["lagCount"], System.Globalization.CultureInfo.InvariantCulture) > 0, "lagCount must be a positive number");
        Assert.False(metadata.ContainsKey("pendingEntriesCount"), "scale on lag, not on pending entries");
        // KEDA runs in its own namespace: the address must be the redis Service's full name.
        Assert.Equal("redis.eventpipeline.svc.cluster.local:6379", metadata["address"]);
        Assert.NotNull(Prod.Find("Service", "redis"));
        AssertAuthentication(trigger, "password");
    }

    [Fact]
    public void Keda_scales_worker_io_on_the_length_of_the_real_queue()
    {
        var scaled = Prod.Get("ScaledObject", "worker-io");
        AssertSaneBounds(scaled, "worker-io");
        var trigger = Assert.Single(scaled["spec"]!["triggers"]!.AsArray())!;
        Assert.Equal("rabbitmq", (string?)trigger["type"]);
        var metadata = Rendered.StringMap(trigger["metadata"]);
        Assert.Equal(IoLaneTopology.QueueName, metadata["queueName"]);
        Assert.Equal("QueueLength", metadata["mode"]);
        Assert.True(int.Parse(metadata["value"], System.Globalization.CultureInfo.InvariantCulture) > 0);
        var host = AssertAuthentication(trigger, "host");
        Assert.EndsWith(".svc.cluster.local", new Uri(host).Host);
    }

    [Fact]
    public void The_api_has_an_hpa_and_no_deployment_fixes_its_replicas_in_prod()
    {
        var hpa = Prod.Get("HorizontalPodAutoscaler", "producer-api");
        Assert.Equal("producer-api", (string?)hpa["spec"]!["scaleTargetRef"]!["name"]);
        Assert.NotNull(Prod.Find("Deployment", "producer-api"));
        var min = (long)hpa["spec"]!["minReplicas"]!;
        Assert.True(min >= 2 && (long)hpa["spec"]!["maxReplicas"]! > min);
        foreach (var deployment in Prod.OfKind("Deployment"))
        {
            Assert.Null(deployment["spec"]!["replicas"]);
        }
    }

    [Fact]
    public void Prod_spreads_each_service_over_zones_and_nodes()
    {
        foreach (var workload in Prod.AppWorkloads)
        {
            var constraints = workload.PodSpec["topologySpreadConstraints"]?.AsArray().Cast<JsonObject>().ToList() ?? [];
            Assert.Equal(["kubernetes.io/hostname", "topology.kubernetes.io/zone"], constraints.Select(c => (string)c["topologyKey"]!).Order());
            Assert.All(constraints, c => Assert.True(Rendered.Selects(Rendered.StringMap(c["labelSelector"]!["matchLabels"]), workload.PodLabels)));
        }
    }

    [Fact]
    public void Prod_rabbitmq_is_a_three_node_operator_cluster_and_redis_is_external()
    {
        var cluster = Prod.Get("RabbitmqCluster", "rabbitmq");
        Assert.Equal(3, (long)cluster["spec"]!["replicas"]!);
        Assert.DoesNotContain(Prod.Workloads, w => w.Name is "redis" or "rabbitmq");
        var redis = Prod.Get("Service", "redis");
        Assert.Null(redis["spec"]!["selector"]);
        Assert.Single(Prod.OfKind("EndpointSlice"));
    }

    [Fact]
    public void Dev_redis_keeps_an_append_only_file_and_requires_the_password()
    {
        var dev = Manifests.Render("overlays/dev");
        var redis = dev.Workload("redis");
        var args = redis.MainContainer["args"]!.AsArray().Select(a => (string)a!).ToList();
        Assert.Equal("yes", args[args.IndexOf("--appendonly") + 1]);
        Assert.Equal("everysec", args[args.IndexOf("--appendfsync") + 1]);
        Assert.Equal("$(REDIS_PASSWORD)", args[args.IndexOf("--requirepass") + 1]);
        var env = dev.EnvironmentOf(redis, redis.MainContainer);
        var api = dev.Workload("producer-api");
        Assert.Contains("password=" + env["REDIS_PASSWORD"], dev.EnvironmentOf(api, api.MainContainer)["ConnectionStrings__redis"]);
        Assert.Equal("/data", args[args.IndexOf("--dir") + 1]);
        Assert.Contains(redis.MainContainer["volumeMounts"]!.AsArray(), m => (string?)m!["mountPath"] == "/data" && (string?)m["name"] == "data");
        Assert.Equal("data", (string?)redis.Object["spec"]!["volumeClaimTemplates"]![0]!["metadata"]!["name"]);

        var rabbit = dev.Workload("rabbitmq");
        Assert.NotNull(rabbit.Object["spec"]!["volumeClaimTemplates"]);
        Assert.Equal(1, (long)rabbit.Object["spec"]!["replicas"]!);
        Assert.Contains(dev.Workloads, w => w.Name == "downstream-receiver");
    }

    private static void AssertSaneBounds(JsonObject scaled, string target)
    {
        Assert.Equal(target, (string?)scaled["spec"]!["scaleTargetRef"]!["name"]);
        Assert.NotNull(Prod.Find("Deployment", target));
        var min = (long)scaled["spec"]!["minReplicaCount"]!;
        var max = (long)scaled["spec"]!["maxReplicaCount"]!;
        Assert.True(min >= 1, "keep one consumer: it also recovers stale entries and runs due retries");
        Assert.InRange(max, min + 1, 50);
    }

    /// <returns>The secret value behind the trigger parameter (from the rendered example secret).</returns>
    private static string AssertAuthentication(JsonNode trigger, string parameter)
    {
        var auth = Prod.Get("TriggerAuthentication", (string)trigger["authenticationRef"]!["name"]!);
        var reference = Assert.Single(auth["spec"]!["secretTargetRef"]!.AsArray(), r => (string?)r!["parameter"] == parameter)!;
        return Prod.SecretData((string)reference["name"]!)[(string)reference["key"]!];
    }
}
