using EventPipeline.Producer.Monitoring;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Ingest;

public sealed class BackpressureOptions
{
    /// <summary>Lane (<c>cpu</c>, <c>io</c>) → the lag (events no consumer has picked up) above which submissions get 429.</summary>
    public Dictionary<string, long> MaxLag { get; set; } = new(StringComparer.Ordinal);

    /// <summary>The Retry-After a client gets with a 429.</summary>
    public int RetryAfterSeconds { get; set; } = 2;
}

/// <summary>
/// Owns "a lane past its lag limit refuses new work": a submission with events for such a lane gets 429 with
/// Retry-After, while the other lane keeps accepting. Uses the sampler's latest reading; with no recent reading (the
/// broker cannot be read) it does not refuse: the publish itself then answers 503 if the broker is really gone.
/// </summary>
public sealed class Backpressure(LaneSampler sampler, IOptions<BackpressureOptions> options)
{
    public int RetryAfterSeconds => options.Value.RetryAfterSeconds;

    /// <returns>the first lane among <paramref name="lanes"/> that is over its limit, with its lag and limit; or null.</returns>
    public (string Lane, long Lag, long Limit)? Overloaded(IEnumerable<string> lanes)
    {
        foreach (var lane in lanes)
        {
            if (options.Value.MaxLag.TryGetValue(lane, out var limit) && sampler.Latest(lane) is { } state && state.Lag > limit)
            {
                return (lane, state.Lag, limit);
            }
        }

        return null;
    }
}
