using Aspire.Hosting.ApplicationModel;
using EventPipeline.AppHost.Monitoring;
using Microsoft.Extensions.Configuration;

namespace Aspire.Hosting;

/// <summary>
/// Prometheus scraping every service's <c>/metrics</c>, RabbitMQ's own Prometheus plugin and a Redis exporter, plus
/// Grafana with the dashboards from infra/grafana. As local executables (Debian's prometheus and
/// prometheus-redis-exporter) when the brokers run as executables — there is no Grafana binary here, so Grafana only
/// joins when a container engine answers — and as containers otherwise. <c>Monitoring:Enabled=false</c> leaves it out.
/// </summary>
public static class MonitoringResourceExtensions
{
    /// <summary>The CPU lane's stream and dead-letter stream (Pipeline.Shared/CpuLaneStreams.cs), watched by the exporter.</summary>
    private const string CpuLaneStreams = "events.cpu,events.cpu.dead";
    private const string PrometheusImageTag = "v2.42.0"; // the same release as Debian's package
    private const string RedisExporterImageTag = "v1.45.0";
    private const string GrafanaImageTag = "11.6.0";

    public static IResourceBuilder<IResourceWithEndpoints>? AddPipelineMonitoring(
        this IDistributedApplicationBuilder builder,
        BrokerHosting hosting,
        IResourceBuilder<IResourceWithConnectionString> redis,
        IResourceBuilder<ParameterResource> redisPassword,
        IResourceBuilder<IResourceWithConnectionString> rabbitmq,
        params IResourceBuilder<ProjectResource>[] services)
    {
        if (!builder.Configuration.GetValue("Monitoring:Enabled", true))
        {
            return null;
        }

        var containers = hosting == BrokerHosting.Containers;
        if (!containers)
        {
            RequireExecutables("prometheus", "prometheus-redis-exporter");
        }

        var redisExporter = containers
            ? builder.AddRedisExporterContainer(redis, redisPassword)
            : builder.AddLocalRedisExporter(redis, redisPassword);

        var targets = new List<ScrapeTarget>();
        targets.AddRange(services.Select(s => new ScrapeTarget("eventpipeline", s.GetEndpoint("http"), Labels(s.Resource.Name))));
        targets.Add(new ScrapeTarget("rabbitmq", builder.RabbitMQPrometheusEndpoint(rabbitmq), Labels(rabbitmq.Resource.Name)));
        targets.Add(new ScrapeTarget("redis", redisExporter.GetEndpoint("http"), Labels(redis.Resource.Name)));

        var prometheus = containers
            ? builder.AddPrometheusContainer(targets)
            : builder.AddLocalPrometheus(targets);

        if (containers)
        {
            builder.AddGrafanaContainer(prometheus);
        }

        return prometheus;
    }

    private static IResourceBuilder<IResourceWithEndpoints> AddLocalPrometheus(this IDistributedApplicationBuilder builder, IReadOnlyList<ScrapeTarget> targets)
    {
        var directory = builder.LocalDataDirectory("prometheus");
        var source = PrometheusConfiguration.SourceDirectory(builder);
        var configDirectory = Path.Combine(directory, "config");
        var prometheus = builder.AddResource(new LocalPrometheusResource("prometheus", directory))
            .WithLocalPort(LocalPrometheusResource.PrimaryEndpointName, "http")
            .WithArgs(async context =>
            {
                var resource = (LocalPrometheusResource)context.Resource;
                await PrometheusConfiguration.WriteAsync(source, configDirectory, resource, targets, context.CancellationToken);
                context.Args.Add($"--config.file={Path.Combine(configDirectory, "prometheus.yml")}");
                context.Args.Add($"--storage.tsdb.path={Path.Combine(resource.DataDirectory, "data")}");
                context.Args.Add("--storage.tsdb.retention.time=7d");
                context.Args.Add(ReferenceExpression.Create($"--web.listen-address=127.0.0.1:{resource.PrimaryEndpoint.Property(EndpointProperty.TargetPort)}"));
            })
            .WithHttpHealthCheck("/-/ready", endpointName: LocalPrometheusResource.PrimaryEndpointName)
            .WithPrometheusUrls(LocalPrometheusResource.PrimaryEndpointName, alertsPath: "/classic/alerts"); // Debian builds no React UI
        return prometheus.AsEndpointResource();
    }

    private static IResourceBuilder<IResourceWithEndpoints> AddPrometheusContainer(this IDistributedApplicationBuilder builder, IReadOnlyList<ScrapeTarget> targets)
    {
        var configDirectory = Path.Combine(builder.LocalDataDirectory("prometheus"), "config");
        var source = PrometheusConfiguration.SourceDirectory(builder);
        var prometheus = builder.AddContainer("prometheus", "prom/prometheus", PrometheusImageTag)
            .WithBindMount(configDirectory, "/etc/prometheus", isReadOnly: true)
            .WithVolume("eventpipeline-prometheus-data", "/prometheus")
            .WithHttpEndpoint(targetPort: 9090, name: "http")
            .WithArgs(async context =>
            {
                await PrometheusConfiguration.WriteAsync(source, configDirectory, context.Resource, targets, context.CancellationToken);
                context.Args.Add("--config.file=/etc/prometheus/prometheus.yml");
                context.Args.Add("--storage.tsdb.path=/prometheus");
            })
            .WithHttpHealthCheck("/-/ready", endpointName: "http")
            .WithPrometheusUrls("http", alertsPath: "/alerts");
        return prometheus.AsEndpointResource();
    }

    private static IResourceBuilder<IResourceWithEndpoints> AddLocalRedisExporter(this IDistributedApplicationBuilder builder,
        IResourceBuilder<IResourceWithConnectionString> redis, IResourceBuilder<ParameterResource> redisPassword)
    {
        var redisEndpoint = ((IResourceWithEndpoints)redis.Resource).GetEndpoint("tcp");
        var exporter = builder.AddResource(new LocalRedisExporterResource("redis-exporter", builder.LocalDataDirectory("redis-exporter")))
            .WithLocalPort(LocalRedisExporterResource.PrimaryEndpointName, "http")
            .WithArgs(context =>
            {
                var resource = (LocalRedisExporterResource)context.Resource;
                context.Args.Add("-redis.addr");
                context.Args.Add(ReferenceExpression.Create($"redis://{redisEndpoint.Property(EndpointProperty.HostAndPort)}"));
                context.Args.Add("-web.listen-address");
                context.Args.Add(ReferenceExpression.Create($"127.0.0.1:{resource.PrimaryEndpoint.Property(EndpointProperty.TargetPort)}"));
                context.Args.Add("-check-streams"); // SCAN patterns: a stream that does not exist yet is skipped, not logged as an error
                context.Args.Add(CpuLaneStreams);
            })
            .WithEnvironment("REDIS_PASSWORD", redisPassword) // not an argument: arguments are visible to every user in ps
            .WaitFor(redis)
            .WithHttpHealthCheck("/health", endpointName: LocalRedisExporterResource.PrimaryEndpointName);
        return exporter.AsEndpointResource();
    }

    private static IResourceBuilder<IResourceWithEndpoints> AddRedisExporterContainer(this IDistributedApplicationBuilder builder,
        IResourceBuilder<IResourceWithConnectionString> redis, IResourceBuilder<ParameterResource> redisPassword)
    {
        var redisEndpoint = ((IResourceWithEndpoints)redis.Resource).GetEndpoint("tcp");
        var exporter = builder.AddContainer("redis-exporter", "oliver006/redis_exporter", RedisExporterImageTag)
            .WithHttpEndpoint(targetPort: 9121, name: "http")
            .WithEnvironment("REDIS_ADDR", ReferenceExpression.Create($"redis://{redisEndpoint.Property(EndpointProperty.HostAndPort)}"))
            .WithEnvironment("REDIS_PASSWORD", redisPassword)
            .WithEnvironment("REDIS_EXPORTER_CHECK_STREAMS", CpuLaneStreams)
            .WaitFor(redis)
            .WithHttpHealthCheck("/health", endpointName: "http");
        return exporter.AsEndpointResource();
    }

    private static void AddGrafanaContainer(this IDistributedApplicationBuilder builder, IResourceBuilder<IResourceWithEndpoints> prometheus)
    {
        var grafana = Path.GetFullPath(Path.Combine(builder.AppHostDirectory, "..", "infra", "grafana"));
        builder.AddContainer("grafana", "grafana/grafana", GrafanaImageTag)
            .WithBindMount(Path.Combine(grafana, "provisioning"), "/etc/grafana/provisioning", isReadOnly: true)
            .WithBindMount(Path.Combine(grafana, "dashboards"), "/var/lib/grafana/dashboards", isReadOnly: true)
            .WithEnvironment("PROMETHEUS_URL", prometheus.GetEndpoint("http"))
            // A local viewer needs no login; nothing here is reachable from outside the machine.
            .WithEnvironment("GF_AUTH_ANONYMOUS_ENABLED", "true")
            .WithEnvironment("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer")
            .WithEnvironment("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "/var/lib/grafana/dashboards/eventpipeline-overview.json")
            .WithHttpEndpoint(targetPort: 3000, name: "http")
            .WithHttpHealthCheck("/api/health", endpointName: "http")
            .WithUrlForEndpoint("http", url => url.DisplayText = "Grafana dashboards")
            .WaitFor(prometheus);
    }

    /// <summary>RabbitMQ's rabbitmq_prometheus plugin: the local node's <c>prometheus</c> endpoint, or port 15692 of the container.</summary>
    private static EndpointReference RabbitMQPrometheusEndpoint(this IDistributedApplicationBuilder builder, IResourceBuilder<IResourceWithConnectionString> rabbitmq)
    {
        var resource = (IResourceWithEndpoints)rabbitmq.Resource;
        if (resource is LocalRabbitMQResource local)
        {
            return local.PrometheusEndpoint;
        }

        var endpoint = resource.GetEndpoint("prometheus");
        if (!endpoint.Exists)
        {
            builder.CreateResourceBuilder(resource).WithHttpEndpoint(targetPort: 15692, name: "prometheus");
        }

        return resource.GetEndpoint("prometheus");
    }

    /// <summary>The pages an operator opens: the graph (the endpoint's own link) and the alerts with their state.</summary>
    private static IResourceBuilder<T> WithPrometheusUrls<T>(this IResourceBuilder<T> builder, string endpointName, string alertsPath) where T : IResourceWithEndpoints =>
        builder
            .WithUrlForEndpoint(endpointName, url => (url.Url, url.DisplayText) = ("/graph", "Prometheus graph"))
            .WithUrlForEndpoint(endpointName, _ => new() { Url = alertsPath, DisplayText = "Prometheus alerts" });

    private static Dictionary<string, string> Labels(string service) => new() { ["service"] = service };

    private static IResourceBuilder<IResourceWithEndpoints> AsEndpointResource<T>(this IResourceBuilder<T> builder) where T : IResourceWithEndpoints =>
        builder.ApplicationBuilder.CreateResourceBuilder<IResourceWithEndpoints>(builder.Resource);

    private static void RequireExecutables(params string[] executables)
    {
        var missing = LocalProcessResources.MissingExecutables(executables);
        if (missing.Count > 0)
        {
            throw new DistributedApplicationException(
                $"Monitoring needs {string.Join(", ", missing)}. Install them once with `{BrokerResourceExtensions.InstallCommand}`, " +
                "or run without monitoring with Monitoring:Enabled=false.");
        }
    }
}
