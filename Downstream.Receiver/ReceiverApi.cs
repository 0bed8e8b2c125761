using System.Collections.Concurrent;
using System.Text.Json;
using EventPipeline.Downstream;
using Microsoft.Extensions.Options;

namespace EventPipeline.Downstream
{
    public sealed class ReceiverOptions
    {
        /// <summary>Latency added to every answer unless the body's <c>simulate.delayMs</c> says otherwise.</summary>
        public int DefaultDelayMs { get; set; }

        /// <summary>Share of deliveries (0..1) answered 503 at random, for trying retries by hand.</summary>
        public double FailureRate { get; set; }

        /// <summary>Arrival times kept for <c>GET /received/arrivals</c> (the newest win).</summary>
        public int MaxRecordedArrivals { get; set; } = 200_000;
    }

    /// <summary>
    /// Counts deliveries per Idempotency-Key, so tests can prove nothing was lost and count duplicates, and keeps the
    /// arrival time of every request, so tests can check the sender's rate limit from the receiving side.
    /// </summary>
    public sealed class DeliveryLedger(IOptions<ReceiverOptions> options)
    {
        private readonly ConcurrentDictionary<string, KeyRecord> _keys = new();
        private readonly ConcurrentQueue<long> _arrivals = new();
        private long _total;
        private long _arrivedTotal;

        // All of a key's figures, its path included: one dictionary lookup per delivery, not one per figure.
        private sealed class KeyRecord
        {
            public int Arrivals;
            public int Accepted;
            public volatile string? TraceParent;
            public volatile string? Path;
        }

        public string? PathOf(string key) => _keys.TryGetValue(key, out var r) ? r.Path : null;

        /// <summary>
        /// Counts an arriving delivery and remembers the path (and query) it was sent to; returns how many times this key
        /// has arrived, this one included.
        /// </summary>
        public int Arrived(string key, string? traceParent, string path)
        {
            _arrivals.Enqueue(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
            Interlocked.Increment(ref _arrivedTotal);
            while (_arrivals.Count > options.Value.MaxRecordedArrivals && _arrivals.TryDequeue(out _))
            {
            }

            var record = _keys.GetOrAdd(key, _ => new KeyRecord());
            record.Path = path;
            if (!string.IsNullOrEmpty(traceParent))
            {
                record.TraceParent = traceParent;
            }

            return Interlocked.Increment(ref record.Arrivals);
        }

        /// <summary>Counts a delivery that was answered 2xx; returns how many times this key was accepted.</summary>
        public int Accepted(string key)
        {
            Interlocked.Increment(ref _total);
            return Interlocked.Increment(ref _keys.GetOrAdd(key, _ => new KeyRecord()).Accepted);
        }

        /// <summary>Deliveries answered 2xx, duplicates included.</summary>
        public long Total => Interlocked.Read(ref _total);

        /// <summary>Keys answered 2xx at least once.</summary>
        public int Distinct => _keys.Values.Count(r => Volatile.Read(ref r.Accepted) > 0);

        /// <summary>Requests that reached the receiver, whatever they were answered.</summary>
        public long Arrivals => Interlocked.Read(ref _arrivedTotal);

        public (int Accepted, int Arrivals, string? TraceParent) For(string key) =>
            _keys.TryGetValue(key, out var r) ? (Volatile.Read(ref r.Accepted), Volatile.Read(ref r.Arrivals), r.TraceParent) : (0, 0, null);

        public long[] ArrivalTimes(long sinceUnixMs) => _arrivals.Where(t => t >= sinceUnixMs).ToArray();
    }
}

namespace Microsoft.AspNetCore.Builder
{
    public static class ReceiverApi
    {
        /// <summary>
        /// <c>POST /webhook</c> honours an optional <c>simulate</c> object in the body: <c>delayMs</c>, <c>failTimes</c>
        /// (503 to the first N deliveries of that Idempotency-Key), <c>status</c> (always answer this status); a delivery it
        /// accepts is answered 200 with an empty body.
        /// <c>GET /received</c> → <c>{total, distinct, arrivals}</c>; <c>GET /received/{key}</c> →
        /// <c>{count, arrivals, traceparent}</c>; <c>POST /received/lookup {keys}</c> → <c>{counts: {key: {count, arrivals}}}</c>;
        /// <c>GET /received/arrivals?sinceMs=</c> → arrival times (unix ms) of every request.
        /// </summary>
        public static WebApplication MapReceiverApi(this WebApplication app)
        {
            // A plain RequestDelegate over singletons resolved once: no request-delegate factory binding, and no DI scope
            // per request (binding a parameter from services opens the request's scope). The receiver stands in for a
            // downstream on the same cores as the lane, so its per-request cost is part of every I/O benchmark
            // (docs/benchmarks-history.md, "Session 9: I/O lane").
            var ledger = app.Services.GetRequiredService<DeliveryLedger>();
            var options = app.Services.GetRequiredService<IOptions<ReceiverOptions>>();
            var logger = app.Services.GetRequiredService<ILogger<DeliveryLedger>>();
            RequestDelegate receive = async context =>
            {
                var request = context.Request;
                var key = request.Headers["Idempotency-Key"].ToString();
                if (key.Length == 0)
                {
                    await Results.Problem(statusCode: 400, title: "Idempotency-Key header is required").ExecuteAsync(context);
                    return;
                }

                var arrival = ledger.Arrived(key, request.Headers["traceparent"].ToString(),
                    request.Path + request.QueryString);
                var ct = context.RequestAborted;
                Simulation simulate;
                try
                {
                    using var body = await JsonDocument.ParseAsync(request.Body, cancellationToken: ct);
                    simulate = Simulation.From(body.RootElement);
                }
                catch (JsonException)
                {
                    await Results.Problem(statusCode: 400, title: "The body is not valid JSON").ExecuteAsync(context);
                    return;
                }

                var delay = simulate.DelayMs ?? options.Value.DefaultDelayMs;
                if (delay > 0)
                {
                    // A sender that gives up (timeout, crash) aborts the request: nothing is counted as accepted then.
                    await Task.Delay(delay, ct);
                }

                if (simulate.Status is { } status and not (>= 200 and < 300))
                {
                    logger.LogInformation("Answering {Status} to {Key} as the body asks", status, key);
                    context.Response.StatusCode = status;
                    return;
                }

                if (arrival <= simulate.FailTimes || (options.Value.FailureRate > 0 && Random.Shared.NextDouble() < options.Value.FailureRate))
                {
                    context.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
                    return;
                }

                // An empty 200: nobody reads the answer's body (the sender looks at the status only, tests at /received),
                // and serializing one was the only JSON writing on this path.
                ledger.Accepted(key);
                context.Response.StatusCode = StatusCodes.Status200OK;
            };
            app.MapPost("/webhook", receive);
            // Any path below /webhook works too and is recorded, so a test can tell which URL a delivery went to.
            app.MapPost("/webhook/{**path}", receive);

            app.MapGet("/received", (DeliveryLedger ledger) =>
                Results.Ok(new { total = ledger.Total, distinct = ledger.Distinct, arrivals = ledger.Arrivals }));
            app.MapGet("/received/arrivals", (long? sinceMs, DeliveryLedger ledger) =>
                Results.Ok(new { arrivals = ledger.ArrivalTimes(sinceMs ?? 0) }));
            // Many keys at once, for tests that check thousands of events.
            app.MapPost("/received/lookup", (LookupRequest lookup, DeliveryLedger ledger) =>
                Results.Ok(new
                {
                    counts = lookup.Keys.Distinct().ToDictionary(k => k, k =>
                    {
                        var (count, arrivals, _) = ledger.For(k);
                        return new { count, arrivals };
                    }),
                }));
            app.MapGet("/received/{key}", (string key, DeliveryLedger ledger) =>
            {
                var (count, arrivals, traceParent) = ledger.For(key);
                return Results.Ok(new { count, arrivals, traceparent = traceParent, path = ledger.PathOf(key) });
            });
            return app;
        }

        private sealed record LookupRequest(IReadOnlyList<string> Keys);

        private sealed record Simulation(int? DelayMs, int FailTimes, int? Status)
        {
            public static Simulation From(JsonElement body)
            {
                if (body.ValueKind != JsonValueKind.Object || !body.TryGetProperty("simulate", out var s) || s.ValueKind != JsonValueKind.Object)
                {
                    return new Simulation(null, 0, null);
                }

                return new Simulation(
                    s.TryGetProperty("delayMs", out var d) && d.TryGetInt32(out var delay) ? Math.Clamp(delay, 0, 600_000) : null,
                    s.TryGetProperty("failTimes", out var f) && f.TryGetInt32(out var fail) ? fail : 0,
                    s.TryGetProperty("status", out var st) && st.TryGetInt32(out var status) ? status : null);
            }
        }
    }
}
