using System.Text.Json;
using Aspire.Hosting.ApplicationModel;

namespace EventPipeline.AppHost.Monitoring;

/// <summary>One Prometheus scrape target: an endpoint and the labels it is stored under.</summary>
internal sealed record ScrapeTarget(string Job, EndpointReference Endpoint, IReadOnlyDictionary<string, string> Labels);

/// <summary>
/// Lays out Prometheus's configuration for this run: infra/prometheus/prometheus.yml and its rules copied as they are
/// (the same files Kubernetes uses), plus the file_sd target files they read, written with the ports the services
/// really got. Runs when Prometheus starts, so every endpoint has been allocated by then.
/// </summary>
internal static class PrometheusConfiguration
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>infra/prometheus beside the AppHost project: the single source of the scrape and rule files.</summary>
    public static string SourceDirectory(IDistributedApplicationBuilder builder) =>
        Path.GetFullPath(Path.Combine(builder.AppHostDirectory, "..", "infra", "prometheus"));

    public static async Task WriteAsync(string sourceDirectory, string configDirectory, IResource prometheus,
        IEnumerable<ScrapeTarget> targets, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(configDirectory);
        File.Copy(Path.Combine(sourceDirectory, "prometheus.yml"), Path.Combine(configDirectory, "prometheus.yml"), overwrite: true);
        var rules = Directory.CreateDirectory(Path.Combine(configDirectory, "rules"));
        foreach (var file in Directory.GetFiles(Path.Combine(sourceDirectory, "rules"), "*.yml"))
        {
            File.Copy(file, Path.Combine(rules.FullName, Path.GetFileName(file)), overwrite: true);
        }

        // Resolved from Prometheus's point of view: localhost for a local process, the container network for a container.
        var context = new ValueProviderContext { Caller = prometheus };
        var groups = new Dictionary<string, List<object>>(StringComparer.Ordinal);
        foreach (var target in targets)
        {
            var hostAndPort = await target.Endpoint.Property(EndpointProperty.HostAndPort).GetValueAsync(context, cancellationToken);
            var list = groups.TryGetValue(target.Job, out var existing) ? existing : groups[target.Job] = [];
            list.Add(new { targets = new[] { hostAndPort }, labels = target.Labels });
        }

        var targetDirectory = Directory.CreateDirectory(Path.Combine(configDirectory, "targets"));
        foreach (var (job, list) in groups)
        {
            // Write then rename: Prometheus watches these files and must never read half of one.
            var path = Path.Combine(targetDirectory.FullName, $"{job}.json");
            await File.WriteAllTextAsync(path + ".tmp", JsonSerializer.Serialize(list, Indented), cancellationToken);
            File.Move(path + ".tmp", path, overwrite: true);
        }
    }
}
