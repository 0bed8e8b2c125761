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
    }

    /// <summary>Counts deliveries per Idempotency-Key, so tests can prove nothing was lost and count duplicates.</summary>
    public sealed class DeliveryLedger
    {
        private readonly ConcurrentDictionary<string, int> _attempts = new();
        private readonly ConcurrentDictionary<string, int> _accepted = new();
        private long _total;

        /// <summary>Counts an arriving delivery; returns how many times this key has arrived, this one included.</summary>
        public int Arrived(string key) => _attempts.AddOrUpdate(key, 1, (_, n) => n + 1);

        /// <summary>Counts a delivery that was answered 2xx.</summary>
        public void Accepted(string key)
        {
            _accepted.AddOrUpdate(key, 1, (_, n) => n + 1);
            Interlocked.Increment(ref _total);
        }

        public long Total => Interlocked.Read(ref _total);

        public int Distinct => _accepted.Count;

        public int AcceptedCount(string key) => _accepted.GetValueOrDefault(key);

        public int ArrivedCount(string key) => _attempts.GetValueOrDefault(key);
    }
}

namespace Microsoft.AspNetCore.Builder
{
    public static class ReceiverApi
    {
        /// <summary>
        /// <c>POST /webhook</c> honours an optional <c>simulate</c> object in the body: <c>delayMs</c>, <c>failTimes</c>
        /// (503 to the first N deliveries of that Idempotency-Key), <c>status</c> (always answer this status).
        /// <c>GET /received</c> → <c>{total, distinct}</c>; <c>GET /received/{key}</c> → <c>{count, arrivals}</c>.
        /// </summary>
        public static WebApplication MapReceiverApi(this WebApplication app)
        {
            app.MapPost("/webhook", async (HttpRequest request, DeliveryLedger ledger, IOptions<ReceiverOptions> options, ILogger<DeliveryLedger> logger, CancellationToken ct) =>
            {
                var key = request.Headers["Idempotency-Key"].ToString();
                if (key.Length == 0)
                {
                    return Results.Problem(statusCode: 400, title: "Idempotency-Key header is required");
                }

                var arrival = ledger.Arrived(key);
                Simulation simulate;
                try
                {
                    using var body = await JsonDocument.ParseAsync(request.Body, cancellationToken: ct);
                    simulate = Simulation.From(body.RootElement);
                }
                catch (JsonException)
                {
                    return Results.Problem(statusCode: 400, title: "The body is not valid JSON");
                }

                var delay = simulate.DelayMs ?? options.Value.DefaultDelayMs;
                if (delay > 0)
                {
                    await Task.Delay(delay, ct);
                }

                if (simulate.Status is { } status and not (>= 200 and < 300))
                {
                    logger.LogInformation("Answering {Status} to {Key} as the body asks", status, key);
                    return Results.StatusCode(status);
                }

                if (arrival <= simulate.FailTimes || (options.Value.FailureRate > 0 && Random.Shared.NextDouble() < options.Value.FailureRate))
                {
                    return Results.StatusCode(StatusCodes.Status503ServiceUnavailable);
                }

                ledger.Accepted(key);
                return Results.Ok(new { received = key, count = ledger.AcceptedCount(key) });
            });

            app.MapGet("/received", (DeliveryLedger ledger) => Results.Ok(new { total = ledger.Total, distinct = ledger.Distinct }));
            app.MapGet("/received/{key}", (string key, DeliveryLedger ledger) =>
                Results.Ok(new { count = ledger.AcceptedCount(key), arrivals = ledger.ArrivedCount(key) }));
            return app;
        }

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
