using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

/// <summary>The CPU lane's dead-letter stream at its edges: duplicates of finished events, and retention.</summary>
[Collection(CpuLaneCollection.Name)]
public sealed class DeadLetterEdgeTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Dead_letter_is_never_written_for_an_event_that_already_succeeded()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        var id = "done-" + Guid.NewGuid().ToString("N");
        await lane.Db.StreamCreateConsumerGroupAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, StreamPosition.Beginning, createStream: true);
        await lane.EnqueueAsync((id, "noop.cpu", new { }));

        // A duplicate entry of an event that already succeeded, left by a consumer that died over and over while
        // running it: the next worker to claim it finds it over the delivery cap and ends it without running it.
        var held = await lane.Db.StreamReadGroupAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, "ghost", ">", 1);
        var entryId = Assert.Single(held).Id;
        await lane.Db.HashSetAsync(CpuLaneStreams.Started, entryId, 10);
        await lane.Db.ExecuteAsync("XCLAIM", CpuLaneStreams.Stream.ToString(), CpuLaneStreams.Group, "ghost", "0", entryId.ToString(), "IDLE", "3600000", "JUSTID");
        Assert.True(await lane.Statuses.MarkSucceededAsync(id, 1, "the first run's result"));

        await lane.StartWorkerAsync(new Dictionary<string, string?> { ["CpuLane__MaxDeliveries"] = "3" });
        await Eventually.TrueAsync(async () => (await lane.Db.StreamPendingAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group)).PendingMessageCount == 0,
            Patience, "the stale duplicate to be claimed and acknowledged", TimeSpan.FromMilliseconds(100));

        var status = await lane.StatusAsync(id);
        Assert.Equal("succeeded", status["state"]);
        var dead = (await lane.DeadLettersAsync()).Where(e => e["id"] == id).ToList();
        Assert.True(dead.Count == 0,
            $"the dead-letter stream holds {dead.Count} entry for {id}, which already succeeded: replaying it would run a finished event again");
        Assert.Equal(0, await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream));
    }

    [Fact]
    public async Task Dead_event_status_outlives_the_status_retention_while_its_dead_letter_exists()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        // Statuses of finished events are kept for one second; a dead event's status must stay with its dead letter.
        await lane.StartWorkerAsync(new Dictionary<string, string?>
        {
            ["CpuLane__MaxAttempts"] = "1",
            ["Status__Retention"] = "00:00:01",
        });
        var failing = "dead-" + Guid.NewGuid().ToString("N");
        var fine = "fine-" + Guid.NewGuid().ToString("N");
        await lane.EnqueueAsync((failing, "test.fail", new { lane = "cpu" }));
        await lane.WaitForStateAsync(failing, "dead", Patience);
        await lane.EnqueueAsync((fine, "noop.cpu", new { }));
        await lane.WaitForStateAsync(fine, "succeeded", Patience);

        // The event that succeeded after the other died keeps its status for the retention: once it is gone, the dead
        // event's status has outlived the normal retention, and must still be there with its dead letter.
        await Eventually.TrueAsync(async () => !await lane.Db.KeyExistsAsync(EventStatusStore.Key(fine)),
            Patience, "the succeeded event's status to expire after Status:Retention", TimeSpan.FromMilliseconds(100));
        Assert.Contains(await lane.DeadLettersAsync(), e => e["id"] == failing);
        var status = await lane.StatusAsync(failing);
        Assert.True(status.TryGetValue("state", out var state) && state == "dead",
            $"the dead letter of {failing} exists but its status is {(status.Count == 0 ? "gone (GET /events/{id} answers 404)" : state)}");
    }

    [Fact]
    public async Task Dead_letters_older_than_the_retention_are_trimmed_and_their_status_outlives_them()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        await lane.StartWorkerAsync(new Dictionary<string, string?>
        {
            ["CpuLane__MaxAttempts"] = "1",
            ["Status__DeadLetterRetention"] = "00:00:01",
        });
        var first = "old-" + Guid.NewGuid().ToString("N");
        await lane.EnqueueAsync((first, "test.fail", new { lane = "cpu" }));
        await lane.WaitForStateAsync(first, "dead", Patience);

        // Every later dead letter trims the stream to the retention: keep dead-lettering until the first one is gone.
        var later = 0;
        await Eventually.TrueAsync(async () =>
        {
            var next = $"later-{later++}-{Guid.NewGuid():N}";
            await lane.EnqueueAsync((next, "test.fail", new { lane = "cpu" }));
            await lane.WaitForStateAsync(next, "dead", Patience);
            return (await lane.DeadLettersAsync()).All(e => e["id"] != first);
        }, Patience, $"the dead letter of {first} to be trimmed after Status:DeadLetterRetention", TimeSpan.FromMilliseconds(200));

        Assert.Equal("dead", (await lane.StatusAsync(first))["state"]);
        Assert.True(await lane.Db.KeyTimeToLiveAsync(EventStatusStore.Key(first)) > TimeSpan.FromHours(23),
            "a dead event's status is kept for the dead-letter retention plus Status:Retention");
    }
}
