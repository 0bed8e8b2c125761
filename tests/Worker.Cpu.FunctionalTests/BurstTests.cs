using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

[Collection(CpuLaneCollection.Name)]
public sealed class BurstTests(SharedRabbitMq rabbit, ITestOutputHelper output)
{
    [Fact]
    public async Task Burst_of_10000_events_through_the_api_all_succeed_exactly_once()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        await lane.StartApiAsync(rabbit);
        // Two processes share the group, as two replicas would.
        await Task.WhenAll(lane.StartWorkerAsync(), lane.StartWorkerAsync());

        var tag = Guid.NewGuid().ToString("N")[..8];
        var started = DateTime.UtcNow;
        var ids = await Bursts.SubmitAsync(lane, 10_000, i => Bursts.Pbkdf2($"burst-{i}-{tag}", 1));
        output.WriteLine($"10,000 accepted in {DateTime.UtcNow - started}");
        Assert.Equal(10_000, ids.Distinct().Count());

        await Eventually.TrueAsync(async () => await lane.CountInStateAsync(ids, "succeeded") == ids.Count,
            TimeSpan.FromMinutes(3), "all 10,000 events to succeed", TimeSpan.FromMilliseconds(500));
        output.WriteLine($"10,000 succeeded {DateTime.UtcNow - started} after the first submit");

        var outcomes = await lane.ReadAsync(ids);
        Assert.Equal([], outcomes.Where(o => o.Value.Completions != 1).Select(o => $"{o.Key}: {o.Value.Completions}")); // none twice
        Assert.Equal([], outcomes.Where(o => o.Value.Result != Bursts.ExpectedPbkdf2(o.Key, 1)).Select(o => o.Key)); // each its own result
        Assert.Empty(await lane.DeadLettersAsync());
        Assert.Equal(0, await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream));
        Assert.Equal(0, await lane.Db.HashLengthAsync(CpuLaneStreams.Started));
    }

    [Fact]
    public async Task Backlog_is_acknowledged_in_shared_transactions_each_event_recorded_once()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        var tag = Guid.NewGuid().ToString("N")[..8];
        var ids = Enumerable.Range(0, 2000).Select(i => $"backlog-{i}-{tag}").ToArray();
        await lane.EnqueueAsync([.. ids.Select(id => (id, "noop.cpu", (object)new { }))]);

        await lane.StartWorkerAsync();
        await Eventually.TrueAsync(async () => await lane.CountInStateAsync(ids, "succeeded") == ids.Length,
            TimeSpan.FromMinutes(2), "all 2,000 backlog events to succeed", TimeSpan.FromMilliseconds(200));

        var outcomes = await lane.ReadAsync(ids);
        Assert.Equal([], outcomes.Where(o => o.Value.Completions != 1).Select(o => $"{o.Key}: {o.Value.Completions}"));
        Assert.Equal(0, await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream));
        Assert.Equal(0, await lane.Db.HashLengthAsync(CpuLaneStreams.Started));
        var pending = await lane.Db.StreamPendingAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group);
        Assert.Equal(0, pending.PendingMessageCount);

        // Every entry was acknowledged, by far fewer XACK commands than entries: successes share transactions.
        var stats = (string)(await lane.Db.ExecuteAsync("INFO", "commandstats"))!;
        var xacks = long.Parse(System.Text.RegularExpressions.Regex.Match(stats, @"cmdstat_xack:calls=(\d+)").Groups[1].Value);
        output.WriteLine($"2,000 entries acknowledged with {xacks} XACK commands");
        Assert.InRange(xacks, 1, ids.Length / 4);
    }
}
