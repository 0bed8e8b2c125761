using System.Text.Json.Nodes;
using EventPipeline.Infra.Tests.Support;
using EventPipeline.Shared;

namespace EventPipeline.Infra.Tests;

public class AutoscalingAndBrokerTests
{
    private static Rendered Prod => Manifests.Render("overlays/prod");

    [Fact]
    public void Keda_scales_worker_cpu_on_the_lag_and_on_the_pending_entries_of_the_real_stream_and_group()
    {
        var scaled = Prod.Get("ScaledObject", "worker-cpu");
        AssertSaneBounds(scaled, "worker-cpu");
        var triggers = scaled["spec"]!["triggers"]!.AsArray().Select(t => t!).ToList();
        Assert.All(triggers, trigger =>
        {
            Assert.Equal("redis-streams", (string?)trigger["type"]);
            var metadata = Rendered.StringMap(trigger["metadata"]);
            Assert.Equal(CpuLaneStreams.Stream.ToString(), metadata["stream"]);
            Assert.Equal(CpuLaneStreams.Group, metadata["consumerGroup"]);
            // KEDA runs in its own namespace: the address must be the redis Service's full name.
            Assert.Equal("redis.eventpipeline.svc.cluster.local:6379", metadata["address"]);
            AssertAuthentication(trigger, "password");
        });
        Assert.NotNull(Prod.Find("Service", "redis"));

        // Lag counts entries not yet delivered; entries delivered and not yet acknowledged need a trigger of their own,
        // or replicas busy with the whole backlog read as idle (lag 0) and are scaled down.
        var lag = Assert.Single(triggers, t => Rendered.StringMap(t["metadata"]).ContainsKey("lagCount"));
        Assert.True(int.Parse(Rendered.StringMap(lag["metadata"])["lagCount"], System.Globalization.CultureInfo.InvariantCulture) > 0, "lagCount must be a positive number");
        var pending = Assert.Single(triggers, t => Rendered.StringMap(t["metadata"]).ContainsKey("pendingEntriesCount"));
        var pendingPerReplica = int.Parse(Rendered.StringMap(pending["metadata"])["pendingEntriesCount"], System.Globalization.CultureInfo.InvariantCulture);
        // At most what one replica holds (8 started per core of its CPU limit), so saturated replicas add replicas.
        var cores = (int)Math.Ceiling(double.Parse(((string?)Prod.Workload("worker-cpu").MainContainer["resources"]!["limits"]!["cpu"])!, System.Globalization.CultureInfo.InvariantCulture));
        Assert.InRange(pendingPerReplica, 1, 8 * cores);
    }

    [Fact]
    public void Keda_scales_worker_io_on_the_ready_and_unacknowledged_messages_of_the_real_queue()
    {
        var scaled = Prod.Get("ScaledObject", "worker-io");
        AssertSaneBounds(scaled, "worker-io");
        var trigger = Assert.Single(scaled["spec"]!["triggers"]!.AsArray())!;
        Assert.Equal("rabbitmq", (string?)trigger["type"]);
        var metadata = Rendered.StringMap(trigger["metadata"]);
        Assert.Equal(IoLaneTopology.QueueName, metadata["queueName"]);
        Assert.Equal("QueueLength", metadata["mode"]);
        Assert.True(int.Parse(metadata["value"], System.Globalization.CultureInfo.InvariantCulture) > 0);
        // Over AMQP KEDA sees only ready messages; over the management API (http) QueueLength also counts the
        // unacknowledged ones, unless excludeUnacknowledged turns that off.
        Assert.Equal("http", metadata.GetValueOrDefault("protocol"));
        Assert.NotEqual("true", metadata.GetValueOrDefault("excludeUnacknowledged"));
        var host = new Uri(AssertAuthentication(trigger, "host"));
        Assert.Equal("http", host.Scheme);
        Assert.Equal(15672, host.Port);
        Assert.EndsWith(".svc.cluster.local", host.Host);
        Assert.Equal("/%2F", host.AbsolutePath);
    }

    [Fact]
    public void The_api_has_an_hpa_and_no_deployment_fixes_its_replicas_in_prod()
    {
        var hpa = Prod.Get("HorizontalPodAutoscaler", "producer-api");
        Assert.Equal("producer-api", (string?)hpa["spec"]!["scaleTargetRef"]!["name"]);
        Assert.NotNull(Prod.Find("Deployment", "producer-api"));
        var min = (long)hpa["spec"]!["minReplicas"]!;
        Assert.True(min >= 2 && (long)hpa["spec"]!["maxReplicas"]! > min);
        // Every autoscaled Deployment (the monitoring pieces keep a fixed count).
        var scaled = Prod.OfKind("HorizontalPodAutoscaler").Concat(Prod.OfKind("ScaledObject")).Select(s => (string)s["spec"]!["scaleTargetRef"]!["name"]!).ToList();
        Assert.Equal(["producer-api", "worker-cpu", "worker-io"], scaled.Order());
        foreach (var deployment in Prod.OfKind("Deployment").Where(d => scaled.Contains(Rendered.Name(d))))
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
