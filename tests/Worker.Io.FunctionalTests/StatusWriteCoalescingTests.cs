using System.Text.Json.Nodes;
using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Io.Delivery;
using StackExchange.Redis;
using static EventPipeline.Worker.Io.Delivery.StatusWriteCoalescer;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// The worker's start checks and success records of concurrent deliveries go to Redis together, and a write that
/// shares a call with others answers exactly what it would alone.
/// </summary>
[Collection(SharedIoLaneCollection.Name)]
public sealed class StatusWriteCoalescingTests(SharedIoLane lane, ITestOutputHelper output)
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(120);
    private IoLaneHost Host => lane.Host;

    [Fact]
    public async Task Status_writes_of_concurrent_deliveries_share_script_calls_and_each_success_is_recorded_once()
    {
        await Host.EnsureWorkerAsync();
        const int events = 400;
        var ids = Enumerable.Range(0, events).Select(i => IoLaneHost.NewId($"coalesce-{i}")).ToList();
        var before = await ScriptCallsAsync();

        // Straight into the queue: the API writes no status, so every script call in the window is the worker's
        // (two per event when each write is sent on its own) or the API's idle polling (a few a second).
        await Host.PublishDirectAsync(ids.Select(id => (id, "noop.io", new JsonObject(), (string?)null)).ToList());
        await Eventually.TrueAsync(async () => (await Host.StatusesAsync(ids)).Values.All(s => s.State == "succeeded"),
            Deadline, "every event to be succeeded", TimeSpan.FromMilliseconds(250));
        var calls = await ScriptCallsAsync() - before;

        var db = Host.StatusConnection.GetDatabase();
        var completions = await Task.WhenAll(ids.Select(id => db.HashGetAsync($"event:{id}", "completions")));
        output.WriteLine($"{events} events: {calls} script calls ({(double)calls / events:F2} per event; 2 when each write goes alone)");
        Assert.All(completions, c => Assert.Equal(1, (int)c));
        Assert.True(calls < events, $"{calls} script calls for {events} events: the status writes were not coalesced");
    }

    [Fact]
    public async Task A_write_sharing_a_call_answers_as_it_would_alone_and_fails_alone()
    {
        var db = Host.StatusConnection.GetDatabase();
        var statuses = new EventStatusStore(Host.StatusConnection, Microsoft.Extensions.Options.Options.Create(new StatusOptions()));
        string succeeded = IoLaneHost.NewId("done"), cancelled = IoLaneHost.NewId("cancelled"), fresh = IoLaneHost.NewId("fresh"),
            running = IoLaneHost.NewId("running"), broken = IoLaneHost.NewId("broken");
        await statuses.MarkAcceptedAsync(succeeded, "noop.io", "io", DateTimeOffset.UtcNow);
        await statuses.MarkSucceededAsync(succeeded, 1, "");
        await statuses.MarkAcceptedAsync(cancelled, "noop.io", "io", DateTimeOffset.UtcNow);
        Assert.Equal(CancelOutcome.Cancelled, (await statuses.CancelAsync(cancelled)).Outcome);
        await statuses.MarkAcceptedAsync(running, "noop.io", "io", DateTimeOffset.UtcNow);
        Assert.Equal(StartDecision.Start, await statuses.TryStartAsync(running, 1, "copy-a"));
        await db.StringSetAsync(EventStatusStore.Key(broken), "not a hash");

        var answers = await WriteAsync(db, statuses.TtlSeconds,
        [
            new(EventStatusStore.Key(succeeded), WriteKind.Start, 2, "copy-x"),
            new(EventStatusStore.Key(succeeded), WriteKind.Succeeded, 2, ""),
            new(EventStatusStore.Key(cancelled), WriteKind.Start, 1, "copy-y"),
            new(EventStatusStore.Key(broken), WriteKind.Start, 1, "copy-z"),
            new(EventStatusStore.Key(running), WriteKind.Start, 1, "copy-b"),
            new(EventStatusStore.Key(fresh), WriteKind.Start, 1, "copy-c"),
            new(EventStatusStore.Key(fresh), WriteKind.Succeeded, 1, "r"),
        ]);

        Assert.Equal(new WriteAnswer((long)StartDecision.AlreadySucceeded, null), answers[0]);
        Assert.Equal(new WriteAnswer(0, null), answers[1]);
        Assert.Equal(new WriteAnswer((long)StartDecision.Cancelled, null), answers[2]);
        Assert.Contains("WRONGTYPE", answers[3].Error);
        Assert.Equal(new WriteAnswer((long)StartDecision.AnotherCopyRunning, null), answers[4]);
        Assert.Equal(new WriteAnswer((long)StartDecision.Start, null), answers[5]);
        Assert.Equal(new WriteAnswer(1, null), answers[6]);
        Assert.Equal("1", (string?)await db.HashGetAsync(EventStatusStore.Key(succeeded), "completions"));
        Assert.Equal("cancelled", (string?)await db.HashGetAsync(EventStatusStore.Key(cancelled), "state"));
        Assert.Equal("succeeded", (string?)await db.HashGetAsync(EventStatusStore.Key(fresh), "state"));
        Assert.True(await db.KeyTimeToLiveAsync(EventStatusStore.Key(fresh)) > TimeSpan.Zero, "the status got no expiry");

        // Through the coalescer: a write whose key is broken throws for its caller only.
        await using var coalescer = new StatusWriteCoalescer(Host.StatusConnection, statuses);
        var other = IoLaneHost.NewId("other");
        var brokenStart = coalescer.TryStartAsync(broken, 1, "copy-q");
        var otherStart = coalescer.TryStartAsync(other, 1, "copy-r");
        await Assert.ThrowsAsync<RedisServerException>(() => brokenStart);
        Assert.Equal(StartDecision.Start, await otherStart);
        Assert.True(await coalescer.MarkSucceededAsync(other, 1, ""));
        Assert.False(await coalescer.MarkSucceededAsync(other, 1, ""));
    }

    private async Task<long> ScriptCallsAsync()
    {
        // INFO is an admin command for StackExchange.Redis.
        await using var admin = await ConnectionMultiplexer.ConnectAsync(Host.Redis.ConnectionString + ",allowAdmin=true");
        var info = await admin.GetServer(admin.GetEndPoints()[0]).InfoAsync("commandstats");
        return info.SelectMany(g => g)
            .Where(kv => kv.Key is "cmdstat_evalsha" or "cmdstat_eval")
            .Sum(kv => long.Parse(kv.Value.Split(',')[0]["calls=".Length..]));
    }
}
