namespace EventPipeline.Bench.Target;

/// <summary>
/// The system under test: where to submit (the API), how to read statuses fast (Redis), where the receiver counts
/// deliveries, and which processes to watch. Either started here through the AppHost or a running system.
/// </summary>
public sealed class PipelineTarget(
    Uri api,
    string apiKey,
    string? redis,
    Uri? downstream,
    IReadOnlyDictionary<string, int> rootPids,
    string description,
    Func<ValueTask>? stop = null) : IAsyncDisposable
{
    /// <summary>The resources whose memory and CPU are reported, in report order.</summary>
    public static readonly string[] Resources = ["producer-api", "worker-cpu", "worker-io", "downstream", "redis", "rabbitmq"];

    public Uri Api { get; } = api;

    public string ApiKey { get; } = apiKey;

    /// <summary>Redis connection string; without it statuses are read one by one over HTTP.</summary>
    public string? Redis { get; } = redis;

    /// <summary>The downstream receiver; without it duplicate deliveries of <c>io</c> events are not counted.</summary>
    public Uri? Downstream { get; } = downstream;

    /// <summary>Resource name → the PID it was started as (its process tree is what is measured).</summary>
    public IReadOnlyDictionary<string, int> RootPids { get; } = rootPids;

    public string Description { get; } = description;

    /// <summary>The admin key (dead letters), when the tool started the system itself.</summary>
    public string? AdminKey { get; init; }

    /// <summary>The running AppHost, when the tool started it: the chaos mode restarts its resources through it.</summary>
    public Aspire.Hosting.DistributedApplication? App { get; init; }

    public ValueTask DisposeAsync() => stop?.Invoke() ?? ValueTask.CompletedTask;
}
