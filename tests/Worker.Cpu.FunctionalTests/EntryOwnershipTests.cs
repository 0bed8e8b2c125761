using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using StackExchange.Redis;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

/// <summary>
/// Once another consumer has claimed an entry (its consumer looked dead), the entry is that consumer's: the first one,
/// if it was only paused, neither takes it back nor starts it.
/// </summary>
[Collection(CpuLaneCollection.Name)]
public sealed class EntryOwnershipTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Worker_paused_past_the_claim_timeout_does_not_take_back_or_start_what_another_consumer_claimed()
    {
        const int iterations = 4_000_000; // seconds each: both consumers are still busy with them after the resume
        // One computing, one waiting to start, two in the buffer: the paused worker holds all four.
        var settings = new Dictionary<string, string?> { ["CpuLane__Handlers"] = "1", ["CpuLane__MaxStarted"] = "1" };
        await using var lane = await CpuLaneHarness.StartAsync();
        await using var monitor = await RedisMonitor.StartAsync(lane.Redis);
        var paused = await lane.StartWorkerAsync(settings);
        var ids = Enumerable.Range(0, 4).Select(i => $"held-{i}-{Guid.NewGuid():N}").ToArray();
        await lane.EnqueueAsync([.. ids.Select(id => (id, "hash.pbkdf2", (object)new { data = Bursts.DataOf(id), iterations }))]);
        await Eventually.TrueAsync(async () => (await PendingAsync(lane)).Count(p => Owns(p, paused)) == ids.Length, Patience,
            "the first worker to hold every entry");
        var entryOf = (await lane.Db.StreamRangeAsync(CpuLaneStreams.Stream)).ToDictionary(e => e["id"].ToString(), e => e.Id.ToString());

        string[] running, waiting;
        int claimedAt;
        await using (ProcessPause.Of(paused.Pid))
        {
            var states = await lane.StatesAsync(ids);
            running = [.. ids.Where(id => states[id].State == "processing")];
            waiting = [.. ids.Where(id => states[id].State == "accepted")];
            output.WriteLine($"paused {paused.Pid}: running {string.Join(", ", running)}; waiting {string.Join(", ", waiting)}");

            var other = await lane.StartWorkerAsync(settings);
            await Eventually.TrueAsync(async () => !(await PendingAsync(lane)).Any(p => Owns(p, paused)), Patience,
                "the second worker to claim every entry of the paused one");
            claimedAt = await monitor.CountThroughNowAsync(lane.Db);
            output.WriteLine($"worker {other.Pid} claimed them; resuming {paused.Pid}");
        }

        await Eventually.TrueAsync(async () => await lane.CountInStateAsync(ids, "succeeded") == ids.Length, Patience,
            "every event to succeed", TimeSpan.FromMilliseconds(200));
        await Eventually.TrueAsync(async () => await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream) == 0, Patience,
            "every entry to be acknowledged");

        Assert.NotEmpty(waiting); // the pause really caught entries that had not started
        // The resumed worker's heartbeat did not take back what the other claimed (XCLAIM to itself, min-idle 0).
        var pausedName = $"\"{Environment.MachineName}-{paused.Pid}\"";
        Assert.Equal([], monitor.LinesAfter(claimedAt).Where(line => line.Contains("\"XCLAIM\"", StringComparison.OrdinalIgnoreCase)
            && line.Contains(pausedName, StringComparison.Ordinal) && entryOf.Values.Any(e => line.Contains(e, StringComparison.Ordinal))));
        var starts = ids.ToDictionary(id => id, id => monitor.Count("HINCRBY", CpuLaneStreams.Started.ToString(), entryOf[id], "1"));
        output.WriteLine(string.Join("\n", starts.Select(s => $"{s.Key}: started {s.Value} time(s)")));
        // An entry that had not started when its worker froze is run by the consumer that claimed it, and only by it.
        Assert.Equal([], waiting.Where(id => starts[id] != 1).Select(id => $"{id} started {starts[id]} times"));
        // The one computing at the freeze may have run on both (its work cannot be taken back), never more.
        Assert.All(running, id => Assert.InRange(starts[id], 1, 2));
        Assert.All((await lane.StatesAsync(ids)).Values, s => Assert.Equal(1, s.Completions));
    }

    private static async Task<StreamPendingMessageInfo[]> PendingAsync(CpuLaneHarness lane) =>
        await lane.Db.StreamPendingMessagesAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, 100, RedisValue.Null);

    private static bool Owns(StreamPendingMessageInfo pending, ChildProcess worker) =>
        pending.ConsumerName.ToString().EndsWith($"-{worker.Pid}", StringComparison.Ordinal);
}
