using System.Globalization;
using EventPipeline.Producer.Monitoring;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Ingest;

public sealed class BackpressureOptions
{
    /// <summary>Lane (<c>cpu</c>, <c>io</c>) → the lag (events no consumer has picked up) above which submissions get 429.</summary>
    public Dictionary<string, long> MaxLag { get; set; } = new(StringComparer.Ordinal);

    /// <summary>The Retry-After a client gets with a 429.</summary>
    public int RetryAfterSeconds { get; set; } = 2;

    /// <summary>
    /// Body bytes this process holds in memory at once across all submissions (arrived, parsed, waiting for their
    /// broker); a submission whose body would take it further gets 429. The default is eight of the largest batches.
    /// </summary>
    public long MaxInFlightBytes { get; set; } = 32L * 1024 * 1024;

    /// <summary>
    /// How long a submission's body may take to arrive once its headers have; past it the answer is 408. Bounds how
    /// long a slow client holds the bytes it has sent (Kestrel's minimum data rate alone lets 4 MiB take hours).
    /// </summary>
    public TimeSpan BodyReadTimeout { get; set; } = TimeSpan.FromSeconds(30);
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

/// <summary>
/// Owns "the API's memory for submissions is bounded, whatever the number of clients, and a 429 writes nothing": the
/// bytes a submission's body holds in memory (<see cref="PooledRequestBody"/> charges every buffer before it reads into
/// it, so a body is counted as its bytes arrive, not as it announces them) are reserved here and given back when its
/// answer is written. A body whose next buffer would take the bytes held past
/// <see cref="BackpressureOptions.MaxInFlightBytes"/> gets 429 with Retry-After and nothing of it is enqueued. One
/// submission is always let in when nothing else is held, so a body the endpoint accepts can never be refused for its
/// size alone (the size limits answer 413).
/// </summary>
/// <remarks>
/// Reserving the announced Content-Length up front let a client that announces a large body and sends it slowly hold
/// the whole reservation for as long as it keeps above Kestrel's minimum data rate: eight such clients locked everyone
/// out. Counting arrived bytes bounds the memory actually held, and <see cref="BackpressureOptions.BodyReadTimeout"/>
/// bounds how long any body may hold it. The reservation is made by the endpoint, so after authentication.
/// </remarks>
public sealed class InFlightIngestBudget(IOptions<BackpressureOptions> options)
{
    public const string ProblemType = "https://eventpipeline.dev/problems/ingest-in-flight";
    public const string BodyReadTimeoutType = "https://eventpipeline.dev/problems/body-read-timeout";

    private long _held;

    public long Held => Interlocked.Read(ref _held);

    public long Limit => options.Value.MaxInFlightBytes;

    public TimeSpan BodyReadTimeout => options.Value.BodyReadTimeout;

    /// <returns>true when the bytes were reserved (give them back with <see cref="Release"/>); false when they would
    /// take the total past the limit while others than the caller (who holds <paramref name="ownHeld"/>) hold bytes.</returns>
    public bool TryReserve(long bytes, long ownHeld = 0)
    {
        while (true)
        {
            var held = Interlocked.Read(ref _held);
            if (held > ownHeld && held + bytes > Limit)
            {
                return false;
            }

            if (Interlocked.CompareExchange(ref _held, held + bytes, held) == held)
            {
                return true;
            }
        }
    }

    /// <summary>Counts bytes already held whatever the limit (what the pool rounded a rented buffer up by).</summary>
    public void Add(long bytes) => Interlocked.Add(ref _held, bytes);

    public void Release(long bytes) => Interlocked.Add(ref _held, -bytes);

    /// <summary>429 with Retry-After: nothing of the submission was enqueued and its buffers are given back.</summary>
    public IResult Refusal(ILogger logger, long? announced)
    {
        logger.LogInformation("Refusing a submission (Content-Length {Announced}): {Held} bytes of submissions are in memory (limit {Limit})",
            announced, Held, Limit);
        var problem = new ProblemDetails
        {
            Status = StatusCodes.Status429TooManyRequests,
            Type = ProblemType,
            Title = "Too many submissions in flight",
            Detail = "The API holds as many submitted bytes as it may while they are read and written to their brokers. " +
                     "Nothing of this request was enqueued; retry after the indicated delay.",
            Extensions = { ["inFlightBytes"] = Held, ["limit"] = Limit },
        };
        return new HeaderResult(TypedResults.Problem(problem),
            ("Retry-After", options.Value.RetryAfterSeconds.ToString(CultureInfo.InvariantCulture)));
    }

    /// <summary>408: the body did not arrive within <see cref="BodyReadTimeout"/>; nothing of it was enqueued.</summary>
    public IResult Timeout() =>
        TypedResults.Problem(statusCode: StatusCodes.Status408RequestTimeout, type: BodyReadTimeoutType, title: "The body took too long to arrive",
            detail: $"A submission's body must arrive within {BodyReadTimeout.TotalSeconds:0.###} s; nothing of this request was enqueued.");
}

public static class InFlightIngestExtensions
{
    public static IHostApplicationBuilder AddInFlightIngestBudget(this IHostApplicationBuilder builder)
    {
        builder.Services.AddOptions<BackpressureOptions>()
            .Validate(o => o.MaxInFlightBytes > 0, "Backpressure:MaxInFlightBytes must be positive")
            .Validate(o => o.BodyReadTimeout > TimeSpan.Zero && o.BodyReadTimeout <= TimeSpan.FromDays(1),
                "Backpressure:BodyReadTimeout must be positive and at most a day (a CancellationTokenSource takes up to ~24.8 days)");
        builder.Services.AddSingleton<InFlightIngestBudget>();
        return builder;
    }
}
