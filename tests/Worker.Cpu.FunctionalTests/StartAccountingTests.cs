using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

/// <summary>
/// A run is charged to an entry (<c>events.cpu.started</c>, which makes it a suspect and moves it towards the delivery
/// cap) only when its work really began, not while it waited for a core.
/// </summary>
[Collection(CpuLaneCollection.Name)]
public sealed class StartAccountingTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Drain_timeout_charges_a_run_only_to_entries_whose_work_began()
    {
        const int handlers = 1;
        const int maxStarted = 4; // four taken up by handlers, only one of them computing at a time
        const int iterations = 3_000_000; // about a second or more each: the drain cannot finish the backlog
        await using var lane = await CpuLaneHarness.StartAsync();
        var settings = new Dictionary<string, string?>
        {
            ["CpuLane__Handlers"] = handlers.ToString(),
            ["CpuLane__MaxStarted"] = maxStarted.ToString(),
            ["CpuLane__DrainTimeout"] = "00:00:01",
        };
        var first = await lane.StartWorkerAsync(settings);
        var ids = Enumerable.Range(0, 6).Select(i => $"backlog-{i}-{Guid.NewGuid():N}").ToArray();
        await lane.EnqueueAsync([.. ids.Select(id => (id, "hash.pbkdf2", (object)new { data = Bursts.DataOf(id), iterations }))]);

        // The worker holds the whole backlog and computes one entry; the other handlers wait for the core with theirs.
        await Eventually.TrueAsync(async () =>
                (await lane.Db.StreamPendingAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group)).PendingMessageCount == ids.Length
                && await lane.CountInStateAsync(ids, "processing") >= 1,
            Patience, "the worker to hold the backlog and be computing");
        var exitedAfter = await first.TerminateAsync(TimeSpan.FromSeconds(20));
        output.WriteLine($"worker exited {exitedAfter} after SIGTERM");

        // Only the entry that was computing when the drain timed out may count as a run that died with its consumer.
        var charged = await lane.Db.HashGetAllAsync(CpuLaneStreams.Started);
        Assert.True(charged.Length <= handlers,
            $"{charged.Length} entries were charged an unfinished run at the drain timeout, but at most {handlers} was computing: "
            + string.Join(", ", charged.Select(c => $"{c.Name}={c.Value}")));

        // So the next worker runs at most that one alone as a suspect, and everything succeeds once.
        var second = await lane.StartWorkerAsync(new Dictionary<string, string?> { ["CpuLane__Handlers"] = "2" });
        await Eventually.TrueAsync(async () => await lane.CountInStateAsync(ids, "succeeded") == ids.Length, Patience,
            "the backlog to succeed on the next worker", TimeSpan.FromMilliseconds(200));
        var suspects = second.Output.Count(line => line.Contains("running it alone", StringComparison.Ordinal));
        Assert.True(suspects <= handlers, $"{suspects} entries were run alone as suspects after a drain timeout");
        var outcomes = await lane.ReadAsync(ids);
        Assert.Equal([], outcomes.Where(o => o.Value.Completions != 1).Select(o => $"{o.Key}: {o.Value.Completions}"));
        Assert.Equal([], outcomes.Where(o => o.Value.Result != Bursts.ExpectedPbkdf2(o.Key, iterations)).Select(o => o.Key));
        Assert.Empty(await lane.DeadLettersAsync());
    }

    [Fact]
    public async Task Drain_timeout_with_redis_stalled_leaves_no_run_charged_to_an_entry_that_never_computed()
    {
        const int handlers = 1;
        const int iterations = 300_000; // a fraction of a second each: several finish (and free a start) during the drain
        await using var lane = await CpuLaneHarness.StartAsync();
        var first = await lane.StartWorkerAsync(new Dictionary<string, string?>
        {
            ["CpuLane__Handlers"] = handlers.ToString(),
            ["CpuLane__MaxStarted"] = "4",
            ["CpuLane__DrainTimeout"] = "00:00:01",
        });
        var ids = Enumerable.Range(0, 40).Select(i => $"stalled-{i}-{Guid.NewGuid():N}").ToArray();
        await lane.EnqueueAsync([.. ids.Select(id => (id, "hash.pbkdf2", (object)new { data = Bursts.DataOf(id), iterations }))]);
        await Eventually.TrueAsync(async () => await lane.CountInStateAsync(ids, "processing") >= 1, Patience, "the worker to be computing");

        var exit = first.TerminateAsync(TimeSpan.FromSeconds(30));
        await Eventually.TrueAsync(() => Task.FromResult(first.Output.Any(line => line.Contains(" draining ", StringComparison.Ordinal))), Patience,
            "the drain to begin", TimeSpan.FromMilliseconds(10));
        await using (var pause = ProcessPause.Of(lane.Redis.Pid))
        {
            // Redis slow through the deadline: jobs finishing in the drain queue their successes and the next entries'
            // starts behind a write that is not answered.
            await Eventually.TrueAsync(() => Task.FromResult(first.Output.Any(line => line.Contains("Drain timeout", StringComparison.Ordinal))), Patience,
                "the drain to time out", TimeSpan.FromMilliseconds(10));
            // Then slow for longer than the take-back used to wait for charges on their way (2 s): a simulated duration
            // of the stall, not a wait for a condition.
            await Task.WhenAny(exit, Task.Delay(TimeSpan.FromSeconds(2.5)));
            pause.Resume();
        }

        output.WriteLine($"worker exited {await exit} after SIGTERM");
        var charged = await lane.Db.HashGetAllAsync(CpuLaneStreams.Started);
        Assert.True(charged.Length <= handlers,
            $"{charged.Length} entries were left charged a run, but at most {handlers} was computing at the drain timeout: "
            + string.Join(", ", charged.Select(c => $"{c.Name}={c.Value}")));
    }
}
