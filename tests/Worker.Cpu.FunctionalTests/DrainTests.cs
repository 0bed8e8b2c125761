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
}
