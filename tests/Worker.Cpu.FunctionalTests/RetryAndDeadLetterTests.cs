using System.Text.Json;
using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

[Collection(CpuLaneCollection.Name)]
public sealed class RetryAndDeadLetterTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Always_failing_event_is_dead_lettered_after_exactly_the_configured_attempts_while_others_succeed()
    {
        const int attempts = 4; // not the default 5, so the setting is what decides
        await using var lane = await CpuLaneHarness.StartAsync();
        // One handler: the others can only succeed meanwhile if the waiting retries hold no handler.
        await lane.StartWorkerAsync(new Dictionary<string, string?>
        {
            ["CpuLane__Handlers"] = "1",
            ["CpuLane__MaxAttempts"] = attempts.ToString(),
            ["CpuLane__RetryBaseDelay"] = "00:00:00.500",
        });
        var failing = "fail-" + Guid.NewGuid().ToString("N");
        var others = Enumerable.Range(0, 50).Select(i => $"ok-{i}-{Guid.NewGuid():N}").ToArray();
        await lane.EnqueueAsync([(failing, "test.fail", new { lane = "cpu" }),
            .. others.Select(id => (id, "hash.pbkdf2", (object)new { data = id, iterations = 1000 }))]);

        // While it waits for its next attempt it sits in the delayed set, acknowledged: no handler holds it.
        await Eventually.TrueAsync(async () =>
            (await lane.Db.SortedSetRangeByRankAsync(CpuLaneStreams.Delayed)).Any(m => m.ToString().Contains(failing, StringComparison.Ordinal)),
            Patience, "the failed event to be parked for a retry", TimeSpan.FromMilliseconds(20));

        var status = await lane.WaitForStateAsync(failing, "dead", Patience);
        Assert.Equal(attempts.ToString(), status["attempts"]);
        Assert.Contains("test.fail", status["error"], StringComparison.Ordinal);

        var dead = Assert.Single(await lane.DeadLettersAsync());
        Assert.Equal(failing, dead["id"].ToString());
        Assert.Equal("test.fail", dead["type"].ToString());
        Assert.Equal("failed", dead["reason"].ToString());
        Assert.Equal(attempts.ToString(), dead["attempts"].ToString());
        Assert.Equal("EventPipeline.Worker.Cpu.Work.RequestedTestFailureException", dead["errorType"].ToString());
        Assert.Equal("test.fail: this event always fails", dead["errorMessage"].ToString());
        Assert.Contains("CpuWork.Run", dead["errorStack"].ToString(), StringComparison.Ordinal);
        Assert.True(long.Parse(dead["deadAt"].ToString()) >= long.Parse(dead["acceptedAt"].ToString()));
        var history = JsonDocument.Parse(dead["errors"].ToString()).RootElement;
        Assert.Equal(Enumerable.Range(1, attempts), history.EnumerateArray().Select(e => e.GetProperty("Attempt").GetInt32()));

        Assert.All((await lane.StatesAsync(others)).Values, s => Assert.Equal(("succeeded", 1L), s));
        Assert.Equal(0, await lane.Db.SortedSetLengthAsync(CpuLaneStreams.Delayed));
        Assert.Equal(0, await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream));
    }

    [Fact]
    public async Task Retry_waiting_in_the_delayed_set_survives_a_worker_restart()
    {
        var settings = new Dictionary<string, string?>
        {
            ["CpuLane__MaxAttempts"] = "2",
            ["CpuLane__RetryBaseDelay"] = "00:00:04",
            ["CpuLane__RetryMaxDelay"] = "00:00:04",
        };
        await using var lane = await CpuLaneHarness.StartAsync();
        var worker = await lane.StartWorkerAsync(settings);
        var id = "retry-" + Guid.NewGuid().ToString("N");
        await lane.EnqueueAsync((id, "test.fail", new { lane = "cpu" }));

        await lane.WaitForStateAsync(id, "retrying", Patience);
        await worker.KillAsync(); // the retry is due in 2-4 s; nobody is left who saw it fail
        Assert.Equal(1, await lane.Db.SortedSetLengthAsync(CpuLaneStreams.Delayed));

        await lane.StartWorkerAsync(settings);
        var status = await lane.WaitForStateAsync(id, "dead", Patience);
        Assert.Equal("2", status["attempts"]);
        Assert.Equal("2", Assert.Single(await lane.DeadLettersAsync())["attempts"].ToString());
    }
}
