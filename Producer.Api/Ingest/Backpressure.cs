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
    /// Request bytes this process holds at once across all submissions (read, parsed, waiting for their broker);
    /// past it a submission gets 429. The default is eight of the largest batches.
    /// </summary>
    public long MaxInFlightBytes { get; set; } = 32L * 1024 * 1024;
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
/// Owns "the API's memory for submissions is bounded, whatever the number of clients": a submission reserves its body
/// size (Content-Length; without one, the largest body its endpoint accepts) before its body is read, and gives it back
/// when its answer is written. A submission that would take the bytes held past
/// <see cref="BackpressureOptions.MaxInFlightBytes"/> gets 429 with Retry-After before anything of it is read or
/// enqueued. One submission is always let in when nothing else is held, so a body the endpoint accepts can never be
/// refused for its size alone (the size limits answer 413).
/// </summary>
public sealed class InFlightIngestBudget(IOptions<BackpressureOptions> options)
{
    private long _held;

    public long Held => Interlocked.Read(ref _held);

    public long Limit => options.Value.MaxInFlightBytes;

    /// <returns>true when the bytes were reserved (give them back with <see cref="Release"/>); false when they would
    /// take the total past the limit.</returns>
    public bool TryReserve(long bytes)
    {
        while (true)
        {
            var held = Interlocked.Read(ref _held);
            if (held > 0 && held + bytes > Limit)
            {
                return false;
            }

            if (Interlocked.CompareExchange(ref _held, held + bytes, held) == held)
            {
                return true;
            }
        }
    }

    public void Release(long bytes) => Interlocked.Add(ref _held, -bytes);
}

/// <summary>Puts <c>POST /events</c> and <c>POST /events/batch</c> under the <see cref="InFlightIngestBudget"/>.</summary>
public sealed class InFlightIngestLimit(RequestDelegate next, InFlightIngestBudget budget, IOptions<IngestOptions> ingest,
    IOptions<BackpressureOptions> options, ILogger<InFlightIngestLimit> logger)
{
    /// <summary>The endpoint names (<c>EventsApi</c>) whose bodies are held until they are enqueued.</summary>
    private static readonly Dictionary<string, Func<IngestOptions, int>> Submissions = new(StringComparer.Ordinal)
    {
        ["SubmitEvent"] = o => o.MaxEventBytes,
        ["SubmitEventBatch"] = o => o.MaxBatchBytes,
    };

    public const string ProblemType = "https://eventpipeline.dev/problems/ingest-in-flight";

    public async Task InvokeAsync(HttpContext context)
    {
        if (context.GetEndpoint()?.Metadata.GetMetadata<IEndpointNameMetadata>()?.EndpointName is not { } name
            || !Submissions.TryGetValue(name, out var maxOf))
        {
            await next(context);
            return;
        }

        // A larger Content-Length is answered 413 by the ingest path without reading it: count it at the limit.
        var max = maxOf(ingest.Value);
        var bytes = Math.Min(context.Request.ContentLength ?? max, max);
        if (!budget.TryReserve(bytes))
        {
            logger.LogInformation("Refusing a submission of {Bytes} bytes: {Held} bytes of submissions are in flight (limit {Limit})",
                bytes, budget.Held, budget.Limit);
            var problem = new ProblemDetails
            {
                Status = StatusCodes.Status429TooManyRequests,
                Type = ProblemType,
                Title = "Too many submissions in flight",
                Detail = "The API holds as many submitted bytes as it may while they are written to their brokers. " +
                         "Nothing of this request was read or enqueued; retry after the indicated delay.",
                Extensions = { ["inFlightBytes"] = budget.Held, ["limit"] = budget.Limit },
            };
            context.Response.Headers.RetryAfter = options.Value.RetryAfterSeconds.ToString(CultureInfo.InvariantCulture);
            await TypedResults.Problem(problem).ExecuteAsync(context);
            return;
        }

        try
        {
            await next(context);
        }
        finally
        {
            budget.Release(bytes);
        }
    }
}

public static class InFlightIngestExtensions
{
    public static IHostApplicationBuilder AddInFlightIngestBudget(this IHostApplicationBuilder builder)
    {
        builder.Services.AddOptions<BackpressureOptions>()
            .Validate(o => o.MaxInFlightBytes > 0, "Backpressure:MaxInFlightBytes must be positive");
        builder.Services.AddSingleton<InFlightIngestBudget>();
        return builder;
    }

    /// <summary>After routing (the endpoint's name decides), before the endpoint reads the body.</summary>
    public static IApplicationBuilder UseInFlightIngestLimit(this IApplicationBuilder app) => app.UseMiddleware<InFlightIngestLimit>();
}
