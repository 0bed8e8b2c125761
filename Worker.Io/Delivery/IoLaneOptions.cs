using System.ComponentModel.DataAnnotations;
using EventPipeline.Shared;

namespace EventPipeline.Worker.Io.Delivery;

/// <summary>Settings of the I/O lane consumer, bound from <c>IoLane</c> and validated at start.</summary>
public sealed class IoLaneOptions
{
    /// <summary>Messages handled at once by this process (all async: a waiting HTTP call holds no thread).</summary>
    [Range(1, 10_000)]
    public int ConcurrentMessageLimit { get; set; } = 64;

    /// <summary>Unacknowledged messages RabbitMQ may push to this process ahead of the handlers.</summary>
    [Range(1, 65_535)]
    public int PrefetchCount { get; set; } = 128;

    /// <summary>Runs of one event before it goes to the error queue (first run included).</summary>
    [Range(1, 100)]
    public int MaxAttempts { get; set; } = 5;

    public TimeSpan RetryMinInterval { get; set; } = TimeSpan.FromMilliseconds(200);

    public TimeSpan RetryMaxInterval { get; set; } = TimeSpan.FromSeconds(10);

    public TimeSpan RetryIntervalDelta { get; set; } = TimeSpan.FromMilliseconds(500);

    /// <summary>On SIGTERM, how long in-flight deliveries may run on before they are cancelled (and their messages return).</summary>
    public TimeSpan ConsumerStopTimeout { get; set; } = TimeSpan.FromSeconds(20);

    /// <summary>On SIGTERM, how long the bus may take to stop in all; covers <see cref="ConsumerStopTimeout"/>.</summary>
    public TimeSpan StopTimeout { get; set; } = TimeSpan.FromSeconds(25);
}

/// <summary>Where webhooks go and how hard they may be pushed.</summary>
public sealed class DownstreamOptions
{
    [Required]
    public Uri BaseAddress { get; set; } = new("http://localhost:5183");

    public string Path { get; set; } = "/webhook";

    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Requests per second to one destination host; a call waits for a permit rather than failing.</summary>
    [Range(1, 1_000_000)]
    public int PermitsPerSecond { get; set; } = 1000;

    /// <summary>
    /// Origins (<c>scheme://host[:port]</c>; no port = the scheme's default) an event's own <c>target</c> may name,
    /// checked again here after the API. The base address's origin is always allowed: it is the operator's, not a client's.
    /// </summary>
    public List<string> AllowedOrigins { get; set; } = [];

    /// <summary>Older form, still read: bare host names, each allowing http on port 80 and https on port 443 only.</summary>
    public List<string> AllowedHosts { get; set; } = [];

    /// <summary>Every origin the worker may call: the allow-list plus the base address's.</summary>
    public bool TryGetOrigins(out DownstreamOrigins origins, out string error)
    {
        var parsed = DownstreamOrigins.TryParse(AllowedOrigins, AllowedHosts, out origins, out error);
        origins = origins.With(BaseAddress);
        return parsed;
    }
}
