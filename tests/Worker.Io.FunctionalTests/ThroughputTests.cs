using EventPipeline.Testing;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>A burst drains completely, and the per-destination rate limit holds as seen by the receiver.</summary>
[Collection(SharedIoLaneCollection.Name)]
public sealed class ThroughputTests(SharedIoLane lane, ITestOutputHelper output)
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(240);
    private IoLaneHost Host => lane.Host;

    [Fact]
    public async Task Burst_of_2000_events_at_50ms_downstream_latency_is_all_delivered()
    {
        await Host.EnsureWorkerAsync();
        var ids = Enumerable.Range(0, 2000).Select(i => IoLaneHost.NewId($"burst-{i}")).ToList();
        await Host.SubmitBatchesAsync(ids.Select(id => IoLaneHost.Webhook(id, delayMs: 50)).ToList());

        await Eventually.TrueAsync(async () => (await Host.ReceivedAsync(ids)).Values.All(r => r.Count >= 1),
            Deadline, "the receiver to have every event", TimeSpan.FromMilliseconds(500));
        var statuses = await Eventually.ReturnsAsync(() => Host.StatusesAsync(ids), s => s.Values.All(x => x.State == "succeeded" && x.FinishedAt is not null),
            Deadline, "every status to be succeeded");

        var received = await Host.ReceivedAsync(ids);
        var duplicates = received.Values.Sum(r => r.Count - 1);
        var latencies = statuses.Values.Select(s => s.FinishedAt!.Value - s.AcceptedAt!.Value).Order().ToArray();
        var drain = statuses.Values.Max(s => s.FinishedAt!.Value) - statuses.Values.Min(s => s.AcceptedAt!.Value);
        output.WriteLine($"2000 events, downstream 50 ms: drain {drain} ms (first accepted → last finished), " +
                         $"end-to-end p50 {Percentile(latencies, 0.50)} ms, p99 {Percentile(latencies, 0.99)} ms, max {latencies[^1]} ms, " +
                         $"{duplicates} duplicate deliveries");
        Assert.Equal(0, duplicates);
    }

    [Fact]
    public async Task Rate_limit_of_100_per_second_holds_in_every_one_second_window()
    {
        await Host.EnsureWorkerAsync(new Dictionary<string, string?> { ["Downstream__PermitsPerSecond"] = "100" });
        var since = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        var ids = Enumerable.Range(0, 500).Select(i => IoLaneHost.NewId($"rate-{i}")).ToList();
        await Host.SubmitBatchesAsync(ids.Select(id => IoLaneHost.Webhook(id)).ToList());

        await Eventually.TrueAsync(async () => (await Host.ReceivedAsync(ids)).Values.All(r => r.Count >= 1),
            Deadline, "the receiver to have every event", TimeSpan.FromMilliseconds(500));

        var arrivals = (await Host.ArrivalTimesAsync(since)).Order().ToArray();
        var peak = PeakInWindow(arrivals, 1000);
        var span = arrivals[^1] - arrivals[0];
        output.WriteLine($"{arrivals.Length} requests over {span} ms; busiest one-second window: {peak} requests; longest silence {arrivals.Zip(arrivals.Skip(1), (a, b) => b - a).Max()} ms");
        output.WriteLine("arrivals per 100 ms: " + string.Join(' ', arrivals.GroupBy(t => (t - arrivals[0]) / 100).Select(g => $"{g.Key}:{g.Count()}")));
        // The token bucket hands out at most 100 + 5 permits in any sliding second (refills every 50 ms, burst of one
        // refill). The receiver stamps arrivals, so a scheduling stall on a loaded machine (load average 20+ on 2 cores
        // seen here) holds back the requests whose permits were granted during it and lands them together after it: a
        // stall of g ms bunches up to g/10 permits (100/s) into one window. Allow 20 over the limiter's own bound plus
        // what the longest silence held back (a CI run beside a bench saw a 400 ms stall, then 40 arrivals in 100 ms:
        // peak 135), and require that the limit held on average too (500 requests take ~5 s, not well under a second).
        var longestSilence = arrivals.Zip(arrivals.Skip(1), (a, b) => b - a).Max();
        // The allowance is capped at half a second of permits: a bucket that saved up a full second (the defect this
        // test is for) still shows at the start, 100 + 100 in the first second, above 175.
        Assert.InRange(peak, 50, 125 + (int)Math.Min(longestSilence / 10, 50));
        Assert.True(span >= 4_500, $"500 requests at 100/s took only {span} ms: the limit did not hold");
    }

    private static int PeakInWindow(long[] sorted, long windowMs)
    {
        var peak = 0;
        for (int start = 0, end = 0; end < sorted.Length; end++)
        {
            while (sorted[end] - sorted[start] >= windowMs)
            {
                start++;
            }

            peak = Math.Max(peak, end - start + 1);
        }

        return peak;
    }

    private static long Percentile(long[] sorted, double p) => sorted[(int)Math.Ceiling(p * sorted.Length) - 1];
}
