namespace Aspire.Hosting.ApplicationModel;

/// <summary>One Redis Sentinel (<c>redis-server &lt;config&gt; --sentinel</c>) run as a local process on loopback.</summary>
public sealed class LocalRedisSentinelResource(string name, string workingDirectory)
    : ExecutableResource(name, "redis-server", workingDirectory), IResourceWithEndpoints
{
    internal const string PrimaryEndpointName = "tcp";

    public EndpointReference PrimaryEndpoint => field ??= new(this, PrimaryEndpointName);
}
