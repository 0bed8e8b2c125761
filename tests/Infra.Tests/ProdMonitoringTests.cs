using System.Text.Json.Nodes;
using EventPipeline.Infra.Tests.Support;

namespace EventPipeline.Infra.Tests;

/// <summary>
/// Prod's monitoring path for kube-prometheus-stack: the alert rules are the AppHost's, every service pod, RabbitMQ node
/// and the Redis exporter are scraped under the job names those rules use, and every service sends OTLP to a collector.
/// </summary>
public class ProdMonitoringTests
{
    private static Rendered Prod => Manifests.Render("overlays/prod");

    [Fact]
    public void Prod_prometheus_rule_holds_exactly_the_rules_the_apphost_loads()
    {
        var expected = new JsonArray([.. Directory.GetFiles(Repo.PathOf("infra", "prometheus", "rules"), "*.yml").Order(StringComparer.Ordinal)
            .SelectMany(f => Yaml.ParseDocuments(File.ReadAllText(f)))
            .SelectMany(d => d["groups"]!.AsArray().Select(g => g!.DeepClone()))]);
        var rule = Assert.Single(Prod.OfKind("PrometheusRule"));
        Assert.True(JsonNode.DeepEquals(expected, rule["spec"]!["groups"]),
            "overlays/prod/prometheusrule.yaml differs from infra/prometheus/rules: run bash infra/k8s/overlays/prod/generate-prometheusrule.sh");
    }

    [Fact]
    public void Prod_monitors_scrape_services_rabbitmq_and_the_redis_exporter_under_the_job_names_of_the_rules()
    {
        var scrapes = new List<(string Job, string Path, string Target)>();

        var eventpipeline = Prod.Get("PodMonitor", "eventpipeline");
        foreach (var app in Prod.AppWorkloads)
        {
            Assert.True(SelectsPod(eventpipeline["spec"]!["selector"]!, app.PodLabels), $"PodMonitor eventpipeline does not select {app.Name}");
        }

        foreach (var endpoint in eventpipeline["spec"]!["podMetricsEndpoints"]!.AsArray())
        {
            Assert.All(Prod.AppWorkloads, w => Assert.Contains(w.Ports, p => p.Name == (string?)endpoint!["port"]));
            // The dashboards and alerts group by `service`, as the AppHost's file_sd targets label them.
            Assert.Contains(endpoint!["relabelings"]!.AsArray(), r => (string?)r!["targetLabel"] == "service" &&
                r["sourceLabels"]!.AsArray().Select(s => (string?)s).SequenceEqual(["__meta_kubernetes_pod_label_app_kubernetes_io_name"]));
            scrapes.Add((Job(endpoint), (string)endpoint["path"]!, "services"));
        }

        var rabbitmq = Prod.Get("PodMonitor", "rabbitmq");
        var cluster = Rendered.Name(Assert.Single(Prod.OfKind("RabbitmqCluster")));
        Assert.True(SelectsPod(rabbitmq["spec"]!["selector"]!, new Dictionary<string, string> { ["app.kubernetes.io/name"] = cluster }));
        foreach (var endpoint in rabbitmq["spec"]!["podMetricsEndpoints"]!.AsArray())
        {
            // The operator names the rabbitmq_prometheus container port (15692) "prometheus".
            Assert.Equal("prometheus", (string?)endpoint!["port"]);
            scrapes.Add((Job(endpoint), (string)endpoint["path"]!, "rabbitmq"));
        }

        var exporter = Prod.Get("ServiceMonitor", "redis-exporter");
        var service = Prod.Get("Service", "redis-exporter");
        Assert.True(Rendered.Selects(Rendered.StringMap(exporter["spec"]!["selector"]!["matchLabels"]), Rendered.StringMap(service["metadata"]!["labels"])));
        var workload = Prod.Workload("redis-exporter");
        Assert.True(Rendered.Selects(Rendered.StringMap(service["spec"]!["selector"]), workload.PodLabels));
        foreach (var endpoint in exporter["spec"]!["endpoints"]!.AsArray())
        {
            Assert.Contains(service["spec"]!["ports"]!.AsArray(), p => (string?)p!["name"] == (string?)endpoint!["port"]);
            scrapes.Add((Job(endpoint!), (string)endpoint!["path"]!, "redis"));
        }

        var exporterEnv = Prod.EnvironmentOf(workload, workload.MainContainer);
        Assert.Equal("redis://redis:6379", exporterEnv["REDIS_ADDR"]);
        Assert.Contains("events.cpu", exporterEnv["REDIS_EXPORTER_CHECK_STREAMS"].Split(','));

        // Same jobs, paths as the AppHost's Prometheus: the rules (up{job=~...}, rabbitmq / redis jobs) and dashboards
        // work unchanged.
        var shared = Yaml.ParseDocuments(Repo.Read("infra", "prometheus", "prometheus.yml"))[0]["scrape_configs"]!.AsArray()
            .Select(c => ((string)c!["job_name"]!, (string?)c["metrics_path"] ?? "/metrics")).Order().ToList();
        Assert.Equal(shared, scrapes.Select(s => (s.Job, s.Path)).Order().ToList());
    }

    [Fact]
    public void Every_prod_service_sends_its_traces_and_logs_to_the_otel_collector()
    {
        var service = Prod.Get("Service", "otel-collector");
        var collector = Prod.Workload("otel-collector");
        Assert.True(Rendered.Selects(Rendered.StringMap(service["spec"]!["selector"]), collector.PodLabels));
        var port = Assert.Single(service["spec"]!["ports"]!.AsArray(), p => (string?)p!["name"] == "otlp-grpc")!;
        var containerPort = WorkloadTests.PortNumber(collector, port["targetPort"]!);

        // The collector listens for OTLP/gRPC on that port and every pipeline sends somewhere.
        var configMap = (string)collector.PodSpec["volumes"]!.AsArray().Single(v => v!["configMap"] is not null)!["configMap"]!["name"]!;
        var config = Yaml.ParseDocuments(Assert.Single(Prod.ConfigMapData(configMap).Values))[0];
        Assert.EndsWith(":" + containerPort, (string)config["receivers"]!["otlp"]!["protocols"]!["grpc"]!["endpoint"]!);
        foreach (var signal in new[] { "traces", "logs" })
        {
            var pipeline = config["service"]!["pipelines"]![signal]!;
            Assert.Contains("otlp", pipeline["receivers"]!.AsArray().Select(r => (string?)r));
            Assert.NotEmpty(pipeline["exporters"]!.AsArray());
        }

        // ServiceDefaults turns the OTLP exporter on only when OTEL_EXPORTER_OTLP_ENDPOINT is set.
        Assert.Contains("\"OTEL_EXPORTER_OTLP_ENDPOINT\"", Repo.Read("ServiceDefaults", "Extensions.cs"));
        foreach (var workload in Prod.AppWorkloads)
        {
            var env = Prod.EnvironmentOf(workload, workload.MainContainer);
            Assert.True(env.TryGetValue("OTEL_EXPORTER_OTLP_ENDPOINT", out var endpoint), $"{workload.Name} has no OTEL_EXPORTER_OTLP_ENDPOINT");
            Assert.Equal($"http://otel-collector:{(long)port["port"]!}", endpoint);
        }
    }

    private static string Job(JsonNode endpoint) =>
        (string)endpoint["relabelings"]!.AsArray().Single(r => (string?)r!["targetLabel"] == "job")!["replacement"]!;

    private static bool SelectsPod(JsonNode selector, IReadOnlyDictionary<string, string> labels)
    {
        var matchLabels = Rendered.StringMap(selector["matchLabels"]);
        var expressions = selector["matchExpressions"]?.AsArray() ?? [];
        return Rendered.Selects(matchLabels, labels) && expressions.All(e =>
            (string?)e!["operator"] == "In" && labels.TryGetValue((string)e["key"]!, out var value) &&
            e["values"]!.AsArray().Any(v => (string?)v == value));
    }
}
