namespace Aspire.Hosting.ApplicationModel;

/// <summary>Debian's <c>prometheus</c> run as a local process, its configuration generated into its data directory.</summary>
public sealed class LocalPrometheusResource(string name, string dataDirectory)
    : ExecutableResource(name, "prometheus", dataDirectory)
{
    internal const string PrimaryEndpointName = "http";

    public string DataDirectory { get; } = dataDirectory;

    public EndpointReference PrimaryEndpoint => field ??= new(this, PrimaryEndpointName);
}

/// <summary>Debian's <c>prometheus-redis-exporter</c> run as a local process next to the CPU lane's Redis.</summary>
public sealed class LocalRedisExporterResource(string name, string workingDirectory)
    : ExecutableResource(name, "prometheus-redis-exporter", workingDirectory)
{
    internal const string PrimaryEndpointName = "http";

    public EndpointReference PrimaryEndpoint => field ??= new(this, PrimaryEndpointName);
}
