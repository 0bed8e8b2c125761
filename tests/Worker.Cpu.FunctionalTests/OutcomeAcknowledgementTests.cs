using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using StackExchange.Redis;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

/// <summary>An entry is acknowledged only together with its recorded outcome, or not at all.</summary>
[Collection(CpuLaneCollection.Name)]
public sealed class OutcomeAcknowledgementTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Success_written_while_redis_is_out_of_memory_is_not_acknowledged()
    {
        const int iterations = 3_000_000; // long enough to turn the memory limit on while it computes
        await using var lane = await CpuLaneHarness.StartAsync();
        var worker = await lane.StartWorkerAsync(new Dictionary<string, string?> { ["CpuLane__Handlers"] = "1" });
        var id = "oom-" + Guid.NewGuid().ToString("N");
        await lane.EnqueueAsync((id, "hash.pbkdf2", new { data = Bursts.DataOf(id), iterations }));
        await lane.WaitForStateAsync(id, "processing", Patience);
        await Eventually.TrueAsync(async () => await lane.Db.HashLengthAsync(CpuLaneStreams.Started) == 1, Patience, "the work to start");

        // Redis out of memory (noeviction): the status script's write would fail, while XACK and XDEL need no memory.
        // (Redis 7 refuses every command queued in a MULTI while it is out of memory, so the whole write fails.)
        var admin = ConfigurationOptions.Parse(lane.Redis.ConnectionString);
        admin.AllowAdmin = true;
        await using var connection = await ConnectionMultiplexer.ConnectAsync(admin);
        var server = connection.GetServer(connection.GetEndPoints()[0]);
        await server.ConfigSetAsync("maxmemory-policy", "noeviction");
        try
        {
            await server.ConfigSetAsync("maxmemory", "1");
            await Eventually.TrueAsync(() => Task.FromResult(worker.Output.Any(line =>
                    line.Contains("Could not record the outcome", StringComparison.Ordinal) && line.Contains(id, StringComparison.Ordinal))),
                Patience, "the worker to fail writing the success");
        }
        finally
        {
            await server.ConfigSetAsync("maxmemory", "0");
        }

        output.WriteLine(string.Join("\n", worker.Output.Where(line => line.Contains("Could not record", StringComparison.Ordinal) || line.Contains("OOM", StringComparison.Ordinal))));
        var status = await lane.StatusAsync(id);
        var pending = await lane.Db.StreamPendingAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group);
        output.WriteLine($"after the failed write: state {status.GetValueOrDefault("state")}, {pending.PendingMessageCount} pending, stream length {await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream)}");
        Assert.True(status.GetValueOrDefault("state") == "succeeded" || pending.PendingMessageCount == 1,
            $"the entry was acknowledged although its success was not recorded (state {status.GetValueOrDefault("state")}, {pending.PendingMessageCount} pending)");

        // Still pending, so it is claimed and run again, and its success is recorded once.
        var done = await lane.WaitForStateAsync(id, "succeeded", Patience);
        Assert.Equal(Bursts.ExpectedPbkdf2(id, iterations), done["result"]);
        Assert.Equal(1, await lane.Statuses.GetCompletionsAsync(id));
        await Eventually.TrueAsync(async () => await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream) == 0, Patience, "the entry to be acknowledged");
    }

    [Fact]
    public async Task Success_whose_status_script_fails_at_run_time_is_not_acknowledged()
    {
        const int iterations = 3_000_000; // long enough to break the status key while it computes
        await using var lane = await CpuLaneHarness.StartAsync();
        var worker = await lane.StartWorkerAsync(new Dictionary<string, string?> { ["CpuLane__Handlers"] = "1" });
        var id = "broken-status-" + Guid.NewGuid().ToString("N");
        await lane.EnqueueAsync((id, "hash.pbkdf2", new { data = Bursts.DataOf(id), iterations }));
        await lane.WaitForStateAsync(id, "processing", Patience);
        await Eventually.TrueAsync(async () => await lane.Db.HashLengthAsync(CpuLaneStreams.Started) == 1, Patience, "the work to start");

        // A status key of the wrong type makes the status script fail when the write runs (WRONGTYPE): a stand-in for
        // any error a script meets at run time, where Redis runs the rest of a MULTI and rolls nothing back.
        var key = EventStatusStore.Key(id);
        await lane.Db.KeyDeleteAsync(key);
        await lane.Db.StringSetAsync(key, "not a status hash");
        try
        {
            await Eventually.TrueAsync(() => Task.FromResult(worker.Output.Any(line =>
                    line.Contains("Could not record the outcome", StringComparison.Ordinal) && line.Contains(id, StringComparison.Ordinal))),
                Patience, "the worker to fail writing the success");
            var pending = await lane.Db.StreamPendingAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group);
            var length = await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream);
            output.WriteLine($"after the failed write: {pending.PendingMessageCount} pending, stream length {length}");
            Assert.True(pending.PendingMessageCount == 1 && length == 1,
                $"the entry was acknowledged although its success was not recorded ({pending.PendingMessageCount} pending, stream length {length})");
        }
        finally
        {
            await lane.Db.KeyDeleteAsync(key);
        }

        // Still pending, so it is claimed and run again, and this time its success is recorded.
        var done = await lane.WaitForStateAsync(id, "succeeded", Patience);
        Assert.Equal(Bursts.ExpectedPbkdf2(id, iterations), done["result"]);
        Assert.Equal(1, await lane.Statuses.GetCompletionsAsync(id));
        await Eventually.TrueAsync(async () => await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream) == 0, Patience, "the entry to be acknowledged");
    }

    [Fact]
    public async Task Dead_letter_that_cannot_be_written_leaves_the_entry_pending_until_it_can()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        var worker = await lane.StartWorkerAsync(new Dictionary<string, string?>
        {
            ["CpuLane__Handlers"] = "1",
            ["CpuLane__MaxAttempts"] = "1",
        });
        var id = "no-dead-letter-" + Guid.NewGuid().ToString("N");
        // The dead-letter stream's key holds a string, so the dead letter's XADD fails (WRONGTYPE) when it runs.
        await lane.Db.KeyDeleteAsync(CpuLaneStreams.DeadLetters);
        await lane.Db.StringSetAsync(CpuLaneStreams.DeadLetters, "not a stream");
        try
        {
            await lane.EnqueueAsync((id, "test.fail", new { lane = "cpu" }));
            await Eventually.TrueAsync(() => Task.FromResult(worker.Output.Any(line =>
                    line.Contains("Could not record the outcome", StringComparison.Ordinal) && line.Contains(id, StringComparison.Ordinal))),
                Patience, "the worker to fail writing the dead letter");
            var pending = await lane.Db.StreamPendingAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group);
            var length = await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream);
            var state = (await lane.StatusAsync(id)).GetValueOrDefault("state");
            output.WriteLine($"after the failed dead letter: state {state}, {pending.PendingMessageCount} pending, stream length {length}");
            Assert.True(pending.PendingMessageCount == 1 && length == 1,
                $"the entry was acknowledged although no dead letter was written (state {state}, {pending.PendingMessageCount} pending, stream length {length})");
            Assert.NotEqual("dead", state);
        }
        finally
        {
            await lane.Db.KeyDeleteAsync(CpuLaneStreams.DeadLetters);
        }

        // Still pending, so it is claimed and fails again, and this time its dead letter is written with the dead status.
        await lane.WaitForStateAsync(id, "dead", Patience);
        await Eventually.TrueAsync(async () => await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream) == 0, Patience, "the entry to be acknowledged");
        var deadLetters = await lane.Db.StreamRangeAsync(CpuLaneStreams.DeadLetters);
        Assert.Single(deadLetters, e => e["id"] == id);
    }
}
