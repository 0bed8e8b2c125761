using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

/// <summary>
/// The heartbeat that keeps held entries from looking stale outlives a slow Redis: a refresh that times out
/// (<c>RedisTimeoutException</c> is a <c>TimeoutException</c>, not a <c>RedisException</c>) is logged and tried again on
/// the next tick. Found by review: the first timeout ended the heartbeat for good, after which every entry held longer
/// than the claim timeout was claimed again and could run twice.
/// </summary>
[Collection(CpuLaneCollection.Name)]
public sealed class HeartbeatTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Heartbeat_keeps_running_after_a_redis_timeout()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        // A one-second Redis timeout, so a heartbeat during the pause fails with a timeout, not a lost connection.
        var worker = await lane.StartWorkerAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings__redis"] = lane.Redis.ConnectionString + ",asyncTimeout=1000,syncTimeout=1000",
            ["CpuLane__Handlers"] = "1",
        });
        var ids = Enumerable.Range(0, 4).Select(i => $"beat-{i}-{Guid.NewGuid():N}").ToArray();
        await lane.EnqueueAsync([.. ids.Select(id => (id, "hash.pbkdf2", (object)new { data = Bursts.DataOf(id), iterations = 5_000_000 }))]);
        await lane.WaitForStateAsync(ids[0], "processing", Patience);

        await using (ProcessPause.Of(lane.Redis.Pid))
        {
            await Eventually.TrueAsync(() => Task.FromResult(worker.Output.Any(l => l.Contains("Could not refresh", StringComparison.Ordinal))),
                TimeSpan.FromSeconds(20), "a heartbeat to time out and be logged", TimeSpan.FromMilliseconds(200));
        }

        // After Redis is back the heartbeat refreshes again: every event runs to success once, none is claimed back.
        foreach (var id in ids)
        {
            await lane.WaitForStateAsync(id, "succeeded", Patience);
            Assert.Equal(1, await lane.Statuses.GetCompletionsAsync(id));
        }

        Assert.DoesNotContain(worker.Output, l => l.Contains("Unhandled", StringComparison.OrdinalIgnoreCase));
    }
}
