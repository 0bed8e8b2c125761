using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using StackExchange.Redis;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

[Collection(CpuLaneCollection.Name)]
public sealed class DrainTests(SharedRabbitMq rabbit, ITestOutputHelper output)
{
    private static readonly TimeSpan DrainTimeout = TimeSpan.FromSeconds(15);

    /// <summary>A BLOCK long enough that a stop which waited for the read is told from one that woke it, even on a loaded machine.</summary>
    private static readonly TimeSpan Block = TimeSpan.FromSeconds(20);

    private static readonly Dictionary<string, string?> LongBlock = new()
    {
        ["CpuLane__BlockTimeout"] = "00:00:20",
        ["CpuLane__ClaimTimeout"] = "00:01:10", // BlockTimeout must stay under a third of it
    };

    [Fact]
    public async Task Sigterm_during_a_burst_finishes_in_flight_work_and_exits_within_the_grace_period()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        await lane.StartApiAsync(rabbit);
        var settings = new Dictionary<string, string?> { ["CpuLane__Handlers"] = "2", ["CpuLane__DrainTimeout"] = "00:00:15" };
        var first = await lane.StartWorkerAsync(settings);

        var tag = Guid.NewGuid().ToString("N")[..8];
        const int iterations = 100_000; // tens of milliseconds each: handlers are mid-run when the signal comes
        var ids = await Bursts.SubmitAsync(lane, 200, i => Bursts.Pbkdf2($"drain-{i}-{tag}", iterations), batchSize: 50);
        await Eventually.TrueAsync(async () => await lane.CountInStateAsync(ids, "succeeded") >= 20, TimeSpan.FromMinutes(2),
            "the worker to be well into the burst");

        var exitedAfter = await first.TerminateAsync(DrainTimeout + TimeSpan.FromSeconds(15));
        output.WriteLine($"worker exited {exitedAfter} after SIGTERM");
        Assert.True(exitedAfter < DrainTimeout + TimeSpan.FromSeconds(5), $"exit took {exitedAfter}");
        Assert.Contains(first.Output, line => line.Contains("drained", StringComparison.Ordinal));

        // Everything it had started it finished and acknowledged: nothing of it is pending, nothing is half-run.
        var consumers = await lane.Db.StreamConsumerInfoAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group);
        Assert.All(consumers, c => Assert.Equal(0, c.PendingMessageCount));
        var states = await lane.StatesAsync(ids);
        Assert.DoesNotContain(states.Values, s => s.State == "processing");
        var finished = states.Values.Count(s => s.State == "succeeded");
        output.WriteLine($"{finished} of {ids.Count} finished before the exit");
        Assert.InRange(finished, 20, ids.Count - 1); // the burst was really interrupted

        await lane.StartWorkerAsync(settings);
        await Eventually.TrueAsync(async () => await lane.CountInStateAsync(ids, "succeeded") == ids.Count, TimeSpan.FromMinutes(3),
            "the rest of the burst to succeed on the next worker", TimeSpan.FromMilliseconds(500));
        var outcomes = await lane.ReadAsync(ids);
        Assert.Equal([], outcomes.Where(o => o.Value.Completions != 1).Select(o => $"{o.Key}: {o.Value.Completions}"));
        Assert.Equal([], outcomes.Where(o => o.Value.Result != Bursts.ExpectedPbkdf2(o.Key, iterations)).Select(o => o.Key));
    }

    [Fact]
    public async Task Sigterm_with_work_longer_than_the_grace_period_leaves_it_pending_for_another_consumer()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        var settings = new Dictionary<string, string?> { ["CpuLane__Handlers"] = "1", ["CpuLane__DrainTimeout"] = "00:00:01" };
        var first = await lane.StartWorkerAsync(settings);
        var id = "long-" + Guid.NewGuid().ToString("N");
        const int iterations = 10_000_000;
        await lane.EnqueueAsync((id, "hash.pbkdf2", new { data = Bursts.DataOf(id), iterations }));
        await lane.WaitForStateAsync(id, "processing", TimeSpan.FromSeconds(60));

        var exitedAfter = await first.TerminateAsync(TimeSpan.FromSeconds(20));
        output.WriteLine($"worker exited {exitedAfter} after SIGTERM");
        Assert.True(exitedAfter < TimeSpan.FromSeconds(1 + 5), $"exit took {exitedAfter}");
        var pending = await lane.Db.StreamPendingMessagesAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, 10, RedisValue.Null);
        Assert.Equal(id, (await lane.Db.StreamRangeAsync(CpuLaneStreams.Stream, Assert.Single(pending).MessageId, Assert.Single(pending).MessageId))[0]["id"].ToString());

        await lane.StartWorkerAsync(settings);
        var status = await lane.WaitForStateAsync(id, "succeeded", TimeSpan.FromSeconds(90));
        Assert.Equal(Bursts.ExpectedPbkdf2(id, iterations), status["result"]);
        Assert.Equal(1, await lane.Statuses.GetCompletionsAsync(id));
    }

    [Fact]
    public async Task Sigterm_of_an_idle_worker_ends_its_blocking_read_instead_of_waiting_it_out()
    {
        // An idle worker sits in XREADGROUP for up to BlockTimeout (8 s by default since session 17, so that it wakes
        // seldom). On SIGTERM one entry on its wake-up stream, read in the same XREADGROUP, ends that read; before, the
        // worker waited it out.
        await using var lane = await CpuLaneHarness.StartAsync();
        var worker = await lane.StartWorkerAsync(LongBlock);

        // SIGTERM right after a read began to block (CLIENT LIST's idle: whole seconds since the command), so that most of
        // its 20 s is still ahead of it.
        var blocked = await Eventually.ReturnsAsync(() => BlockedReaderAsync(lane.Db), c => c is { Idle: 0 }, TimeSpan.FromSeconds(60),
            "the worker's reader to begin a blocking read", TimeSpan.FromMilliseconds(50));
        var exitedAfter = await worker.TerminateAsync(TimeSpan.FromSeconds(60));
        output.WriteLine($"reader {blocked!.Name} blocked; worker exited {exitedAfter} after SIGTERM");

        Assert.True(exitedAfter < Block / 2,
            $"the worker exited {exitedAfter} after SIGTERM: it waited out its reader's {Block} BLOCK, begun less than a second before the signal");
        Assert.Contains(worker.Output, line => line.Contains("drained", StringComparison.Ordinal));
        // Its wake-up stream went with it.
        Assert.Empty(await WakeStreamsAsync(lane));
    }

    [Fact]
    public async Task A_worker_whose_wake_up_stream_was_deleted_makes_it_again_and_still_stops_at_once()
    {
        // An operator's DEL (or its expiry, or a Redis that lost its data) takes the wake-up stream away under a reading
        // worker: the blocked read fails ("UNBLOCKED the stream key no longer exists"), the worker makes the stream again,
        // keeps taking entries, and a stop still ends its read.
        await using var lane = await CpuLaneHarness.StartAsync();
        var worker = await lane.StartWorkerAsync(LongBlock);
        var wake = Assert.Single(await Eventually.ReturnsAsync(() => WakeStreamsAsync(lane), keys => keys.Count == 1, TimeSpan.FromSeconds(60),
            "the worker to make its wake-up stream", TimeSpan.FromMilliseconds(50)));
        var lifetime = await lane.Db.KeyTimeToLiveAsync(wake);
        Assert.True(lifetime is { } ttl && ttl > TimeSpan.Zero && ttl <= TimeSpan.FromMinutes(10), $"wake-up stream {wake} lives {lifetime?.ToString() ?? "forever"}");

        await Eventually.ReturnsAsync(() => BlockedReaderAsync(lane.Db), c => c is not null, TimeSpan.FromSeconds(60),
            "the worker's reader to block", TimeSpan.FromMilliseconds(50));
        Assert.True(await lane.Db.KeyDeleteAsync(wake));

        var id = $"after-wake-delete-{Guid.NewGuid():N}";
        await lane.EnqueueAsync((id, "noop.cpu", new { }));
        await lane.WaitForStateAsync(id, "succeeded", TimeSpan.FromSeconds(60));
        await Eventually.TrueAsync(() => lane.Db.KeyExistsAsync(wake), TimeSpan.FromSeconds(60), "the worker to make its wake-up stream again",
            TimeSpan.FromMilliseconds(100));
        lifetime = await lane.Db.KeyTimeToLiveAsync(wake);
        Assert.True(lifetime is { } again && again > TimeSpan.Zero, $"wake-up stream {wake}, made again, lives {lifetime?.ToString() ?? "forever"}");

        var blocked = await Eventually.ReturnsAsync(() => BlockedReaderAsync(lane.Db), c => c is { Idle: 0 }, TimeSpan.FromSeconds(60),
            "the worker's reader to begin a blocking read", TimeSpan.FromMilliseconds(50));
        var exitedAfter = await worker.TerminateAsync(TimeSpan.FromSeconds(60));
        output.WriteLine($"reader {blocked!.Name} blocked; worker exited {exitedAfter} after SIGTERM");
        Assert.True(exitedAfter < Block / 2, $"the worker exited {exitedAfter} after SIGTERM: it waited out its {Block} BLOCK");
        Assert.Empty(await WakeStreamsAsync(lane));
    }

    [Fact]
    public async Task A_wake_up_stream_replaced_by_a_key_of_another_type_does_not_stop_the_lane()
    {
        // Review of the change: a key of another type under the wake-up stream's name made every XREADGROUP naming it fail
        // (WRONGTYPE), and the reader kept naming it until its lifetime would have run out: no lane entry was read for
        // minutes. Now the reader stops naming it and reads the lane alone. The key is replaced while no read is blocked
        // on it (the worker paused, its 1 s BLOCK over): a blocked read would hear "UNBLOCKED" instead and take the
        // deleted-stream path.
        await using var lane = await CpuLaneHarness.StartAsync();
        var worker = await lane.StartWorkerAsync();
        var wake = Assert.Single(await Eventually.ReturnsAsync(() => WakeStreamsAsync(lane), keys => keys.Count == 1, TimeSpan.FromSeconds(60),
            "the worker to make its wake-up stream", TimeSpan.FromMilliseconds(50)));
        await using (ProcessPause.Of(worker.Pid))
        {
            await Eventually.ReturnsAsync(() => BlockedReaderAsync(lane.Db), c => c is null, TimeSpan.FromSeconds(30),
                "the paused worker's read to end in Redis", TimeSpan.FromMilliseconds(100));
            Assert.True(await lane.Db.StringSetAsync(wake, "not a stream"));
        }

        var id = $"after-wake-wrongtype-{Guid.NewGuid():N}";
        await lane.EnqueueAsync((id, "noop.cpu", new { }));

        await lane.WaitForStateAsync(id, "succeeded", TimeSpan.FromSeconds(30));
    }

    private static async Task<IReadOnlyList<RedisKey>> WakeStreamsAsync(CpuLaneHarness lane)
    {
        var keys = new List<RedisKey>();
        var cursor = "0";
        do
        {
            var page = (RedisResult[])(await lane.Db.ExecuteAsync("SCAN", cursor, "MATCH", $"{CpuLaneStreams.Stream}.wake:*", "COUNT", 1000))!;
            cursor = (string)page[0]!;
            keys.AddRange(((RedisResult[])page[1]!).Select(k => (RedisKey)(string)k!));
        }
        while (cursor != "0");

        return keys;
    }

    private sealed record BlockedClient(string Name, long Idle);

    /// <summary>The worker's reader connection while it is blocked in a command, from CLIENT LIST; null otherwise.</summary>
    private static async Task<BlockedClient?> BlockedReaderAsync(IDatabase db)
    {
        var list = (string?)await db.ExecuteAsync("CLIENT", "LIST", "TYPE", "normal") ?? "";
        foreach (var line in list.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var fields = line.Split(' ').Select(f => f.Split('=', 2)).Where(kv => kv.Length == 2).ToDictionary(kv => kv[0], kv => kv[1]);
            if (fields.GetValueOrDefault("name", "").StartsWith("worker-cpu-reader", StringComparison.Ordinal)
                && fields.GetValueOrDefault("flags", "").Contains('b'))
            {
                return new BlockedClient(fields["name"], long.Parse(fields["idle"]));
            }
        }

        return null;
    }
}
