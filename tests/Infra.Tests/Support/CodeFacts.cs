using System.Reflection;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using Microsoft.Extensions.Configuration;

namespace EventPipeline.Infra.Tests.Support;

/// <summary>What one service's code reads and serves, taken from its source, project file and assembly.</summary>
public sealed partial class ServiceFacts
{
    private ServiceFacts(string workload, string project, Assembly assembly)
    {
        Workload = workload;
        Project = project;
        Assembly = assembly;
        Source = Repo.SourceOf(project);
        ConnectionNames = [.. ConnectionPattern().Matches(Source).Select(m => m.Groups["name"].Value).Distinct().Order(StringComparer.Ordinal)];
        Bindings = BindPattern().Matches(Source)
            .Select(m => (Section: m.Groups["section"].Value, Type: ResolveType(m.Groups["type"].Value.Split('.').Last())))
            .DistinctBy(b => b.Section)
            .ToDictionary(b => b.Section, b => b.Type, StringComparer.OrdinalIgnoreCase);
        var csproj = XDocument.Load(Repo.PathOf(project, project + ".csproj"));
        ContainerRepository = csproj.Descendants("ContainerRepository").SingleOrDefault()?.Value;
        ContainerImageTag = csproj.Descendants("ContainerImageTag").SingleOrDefault()?.Value;
        ContainerUser = csproj.Descendants("ContainerUser").SingleOrDefault()?.Value;
        ContainerPorts = [.. csproj.Descendants("ContainerPort").Select(p => int.Parse(p.Attribute("Include")!.Value, System.Globalization.CultureInfo.InvariantCulture))];
    }

    public static readonly ServiceFacts ProducerApi = new("producer-api", "Producer.Api", typeof(EventPipeline.Producer.Ingest.IngestOptions).Assembly);
    public static readonly ServiceFacts WorkerCpu = new("worker-cpu", "Worker.Cpu", typeof(EventPipeline.Worker.Cpu.Lane.CpuLaneOptions).Assembly);
    public static readonly ServiceFacts WorkerIo = new("worker-io", "Worker.Io", typeof(EventPipeline.Worker.Io.Delivery.IoLaneOptions).Assembly);
    public static readonly ServiceFacts DownstreamReceiver = new("downstream-receiver", "Downstream.Receiver", typeof(EventPipeline.Downstream.ReceiverOptions).Assembly);

    public static readonly IReadOnlyList<ServiceFacts> All = [ProducerApi, WorkerCpu, WorkerIo, DownstreamReceiver];

    public static ServiceFacts For(string workload) => All.Single(s => s.Workload == workload);

    /// <summary>The Deployment name in the manifests.</summary>
    public string Workload { get; }

    public string Project { get; }

    public Assembly Assembly { get; }

    public string Source { get; }

    /// <summary>Connection strings the service reads (<c>AddRedisClient("x")</c>, <c>GetConnectionString("x")</c>).</summary>
    public IReadOnlyList<string> ConnectionNames { get; }

    /// <summary>Configuration section → options type bound to it (<c>AddOptions&lt;T&gt;().BindConfiguration("S")</c>).</summary>
    public IReadOnlyDictionary<string, Type> Bindings { get; }

    public string? ContainerRepository { get; }

    public string? ContainerImageTag { get; }

    public string? ContainerUser { get; }

    public IReadOnlyList<int> ContainerPorts { get; }

    public bool Uses(string connectionName) => ConnectionNames.Contains(connectionName);

    public string AppSettingsPath => Repo.PathOf(Project, "appsettings.json");

    /// <summary>appsettings.json overlaid with the environment a container gets (__ → :), as the host builds it.</summary>
    public IConfigurationRoot EffectiveConfiguration(IReadOnlyDictionary<string, string> environment) =>
        new ConfigurationBuilder()
            .AddJsonFile(AppSettingsPath, optional: false)
            .AddInMemoryCollection(environment.Select(kv => KeyValuePair.Create(kv.Key.Replace("__", ":", StringComparison.Ordinal), (string?)kv.Value)))
            .Build();

    public override string ToString() => Workload;

    private Type ResolveType(string simpleName)
    {
        // The service's own type first (Worker.Cpu and Worker.Io each define a TestEventsOptions), then shared ones.
        var candidates = new[] { Assembly, typeof(EventPipeline.Shared.StatusOptions).Assembly }
            .SelectMany(a => a.GetTypes())
            .Where(t => t.Name == simpleName);
        return candidates.FirstOrDefault() ?? throw new InvalidOperationException($"{Project}: options type {simpleName} not found");
    }

    [GeneratedRegex("""(?:AddRedisClient|AddRabbitMQClient|GetConnectionString)\(\s*"(?<name>[^"]+)"\s*[,)]""")]
    private static partial Regex ConnectionPattern();

    [GeneratedRegex("""AddOptions<(?<type>[\w.]+)>\(\)\s*\.BindConfiguration\("(?<section>[^"]+)"\)""")]
    private static partial Regex BindPattern();
}

/// <summary>What ServiceDefaults maps in every service: health endpoints, /metrics, and the keys it reads.</summary>
public static partial class DefaultsFacts
{
    public static readonly string Source = Repo.SourceOf("ServiceDefaults");

    public static string ReadinessPath => Constant("HealthEndpointPath");

    public static string LivenessPath => Constant("AlivenessEndpointPath");

    /// <summary>The path MapPrometheusScrapingEndpoint() serves when called without one (the exporter's default).</summary>
    public static string MetricsPath
    {
        get
        {
            Assert.Matches(@"MapPrometheusScrapingEndpoint\(\)", Source);
            var optionsType = Type.GetType("OpenTelemetry.Exporter.PrometheusAspNetCoreOptions, OpenTelemetry.Exporter.Prometheus.AspNetCore", throwOnError: true)!;
            var options = Activator.CreateInstance(optionsType, nonPublic: true)!;
            return (string)optionsType.GetProperty("ScrapeEndpointPath")!.GetValue(options)!;
        }
    }

    /// <summary>Raw keys ServiceDefaults reads with <c>Configuration["KEY"]</c> (e.g. OTEL_EXPORTER_OTLP_ENDPOINT).</summary>
    public static IReadOnlyList<string> RawKeys => [.. RawKeyPattern().Matches(Source).Select(m => m.Groups[1].Value)];

    private static string Constant(string name)
    {
        var match = Regex.Match(Source, $@"const string {name} = ""([^""]+)""");
        Assert.True(match.Success, $"ServiceDefaults has no constant {name}");
        return match.Groups[1].Value;
    }

    [GeneratedRegex("""Configuration\["([^"]+)"\]""")]
    private static partial Regex RawKeyPattern();
}
