using EventPipeline.Contracts;
using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Io.Delivery;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// What the status scripts (<see cref="EventStatusStore"/>, and the same Lua functions through the I/O lane's
/// <see cref="StatusWriteCoalescer"/>) let a late writer do to a final state, against one real redis-server: a success
/// that lands after a cancel or a dead decision is the truth about the work and is recorded (so no replayed copy runs
/// it again); a failure never reopens a cancelled, expired or dead event; a replayed copy may start from <c>dead</c>.
/// </summary>
public sealed class StatusTransitionTests(StatusTransitionTests.Redis redis) : IClassFixture<StatusTransitionTests.Redis>
{
    public sealed class Redis : IAsyncLifetime
    {
        private RedisServer _server = null!;

        public RedisServer Server => _server;

        public ConnectionMultiplexer Connection { get; private set; } = null!;

        public EventStatusStore Statuses { get; private set; } = null!;

        public StatusWriteCoalescer Coalescer { get; private set; } = null!;

        public async Task InitializeAsync()
        {
            _server = await RedisServer.StartAsync();
            Connection = await _server.ConnectAsync();
            Statuses = new EventStatusStore(Connection, Options.Create(new StatusOptions()));
            Coalescer = new StatusWriteCoalescer(Connection, Statuses);
        }

        public async Task DisposeAsync()
        {
            await Coalescer.DisposeAsync();
            await Connection.DisposeAsync();
            await _server.DisposeAsync();
        }
    }

    private EventStatusStore Statuses => redis.Statuses;

    /// <summary>Puts a new event in <paramref name="state"/> the way the system gets it there.</summary>
    private async Task<string> EventInAsync(string state, string copy)
    {
        var id = $"{state}-{Guid.NewGuid():N}";
        await Statuses.MarkAcceptedAsync(id, EventTypes.WebhookPost, Lanes.Io, DateTimeOffset.UtcNow);
        switch (state)
        {
            case EventStates.Cancelled:
                // A cancel is taken while the event waits for a retry; a copy of it may still run elsewhere.
                Assert.Equal(StartDecision.Start, await Statuses.TryStartAsync(id, 1, copy));
                await Statuses.MarkRetryingAsync(id, 1, "downstream answered 500");
                Assert.Equal(CancelOutcome.Cancelled, (await Statuses.CancelAsync(id)).Outcome);
                break;
            case EventStates.Dead:
                Assert.Equal(StartDecision.Start, await Statuses.TryStartAsync(id, 1, copy));
                await Statuses.MarkDeadAsync(id, 5, "dead-lettered by RabbitMQ (delivery_limit)");
                break;
            case EventStates.Expired:
                await redis.Connection.GetDatabase().HashSetAsync(EventStatusStore.Key(id), "expiresAt", EventStatusStore.Now - 1000);
                Assert.Equal(StartDecision.Expired, await Statuses.TryStartAsync(id, 1, copy));
                break;
        }

        Assert.Equal(state, await Statuses.GetStateAsync(id));
        return id;
    }

    [Theory]
    [InlineData(EventStates.Cancelled)]
    [InlineData(EventStates.Dead)]
    public async Task A_success_that_lands_after_a_cancel_or_dead_decision_is_recorded_so_no_replayed_copy_runs_it_again(string state)
    {
        var id = await EventInAsync(state, "copy-a");
        var seen = await Statuses.GetReplayViewAsync(id);

        // The copy that was already running finishes: its work happened, the status says so.
        Assert.True(await redis.Coalescer.MarkSucceededAsync(id, 1, ""), $"the late success of a {state} event was not recorded");

        var status = (await Statuses.GetAsync(id))!;
        Assert.True(status.State == EventStates.Succeeded, $"a success that landed on a {state} event left it {status.State}");
        Assert.Equal(1, await Statuses.GetCompletionsAsync(id));
        // A replay decided before the success (or a dead letter of it) never runs the work again.
        Assert.False(await Statuses.MarkReplayedIfUnchangedAsync(id, EventTypes.WebhookPost, Lanes.Io, DateTimeOffset.UtcNow, seen.State, seen.FinishedAt));
        Assert.Equal(StartDecision.AlreadySucceeded, await redis.Coalescer.TryStartAsync(id, 1, "copy-a"));
        Assert.Equal(EventStates.Succeeded, await Statuses.GetStateAsync(id));
    }

    [Theory]
    [InlineData(EventStates.Cancelled)]
    [InlineData(EventStates.Expired)]
    [InlineData(EventStates.Dead)]
    public async Task A_failed_attempt_never_reopens_a_cancelled_expired_or_dead_event(string state)
    {
        var id = await EventInAsync(state, "copy-a");

        // A copy that was running (a worker paused past the broker's heartbeat) fails its attempt after the decision.
        await Statuses.MarkRetryingAsync(id, 2, "downstream answered 500");

        var after = await Statuses.GetStateAsync(id);
        Assert.True(after == state, $"a failed attempt turned a {state} event into '{after}'");
        if (state != EventStates.Dead)
        {
            // ... so its next attempt is refused, and the event the user cancelled (or that expired) never runs again.
            var next = await redis.Coalescer.TryStartAsync(id, 3, "copy-a");
            Assert.True(next is StartDecision.Cancelled or StartDecision.Expired, $"the next attempt of a {state} event was answered {next}");
        }
    }

    [Fact]
    public async Task A_replayed_copy_that_reaches_its_worker_before_the_replay_status_write_still_starts()
    {
        // The I/O replay publishes the dead letter's own message (same message id) before it writes accepted, and keeps
        // the event dead if that write fails: the copy must be able to start from dead, or it would be acknowledged
        // unrun and the event left accepted (or dead without its dead letter) for good.
        var id = await EventInAsync(EventStates.Dead, "copy-a");

        Assert.Equal(StartDecision.Start, await redis.Coalescer.TryStartAsync(id, 1, "copy-a"));
        Assert.Equal(EventStates.Processing, await Statuses.GetStateAsync(id));
    }

    [Fact]
    public async Task A_second_copy_is_refused_while_one_runs_and_the_same_copy_redelivered_is_not()
    {
        var id = await EventInAsync(EventStates.Accepted, "");

        Assert.Equal(StartDecision.Start, await redis.Coalescer.TryStartAsync(id, 1, "copy-a"));
        Assert.Equal(StartDecision.AnotherCopyRunning, await redis.Coalescer.TryStartAsync(id, 1, "copy-b"));
        Assert.Equal(StartDecision.Start, await Statuses.TryStartAsync(id, 1, "copy-a"));
        var fields = await redis.Connection.GetDatabase().HashGetAsync(EventStatusStore.Key(id), ["copy", "startedAt", "attempts"]);
        Assert.Equal("copy-a", fields[0].ToString());
        Assert.False(fields[1].IsNull, "the start wrote no startedAt");
        Assert.Equal("1", fields[2].ToString());
    }

    [Fact]
    public async Task Each_status_change_of_an_io_event_is_one_read_and_one_write_of_its_hash()
    {
        // Paid per event: the API's accepted, the worker's start (with its copy check) and its success. Each is one read
        // and one write of the hash plus its EXPIRE (docs/io-lane.md, "Redis commands per event").
        const int events = 20;
        await using var monitor = await RedisMonitor.StartAsync(redis.Server);
        var skip = monitor.Lines.Count;
        var ids = Enumerable.Range(0, events).Select(i => $"counted-{i}-{Guid.NewGuid():N}").ToArray();
        foreach (var id in ids)
        {
            await Statuses.MarkAcceptedAsync(id, EventTypes.WebhookPost, Lanes.Io, DateTimeOffset.UtcNow);
            Assert.Equal(StartDecision.Start, await redis.Coalescer.TryStartAsync(id, 1, "copy-a"));
            Assert.True(await redis.Coalescer.MarkSucceededAsync(id, 1, ""));
        }

        // The last command reaches MONITOR after its reply: wait until every event's success is there.
        await Eventually.TrueAsync(() => Task.FromResult(monitor.LinesAfter(skip).Count(l => l.Contains("\"HSET\"", StringComparison.OrdinalIgnoreCase)
            && l.Contains("\"succeeded\"", StringComparison.Ordinal)) == events), TimeSpan.FromSeconds(30), "MONITOR to show every success");
        var perEvent = ids.Select(id => monitor.LinesAfter(skip).Count(l => l.Contains(" lua] ", StringComparison.Ordinal)
            && l.Contains($"\"event:{id}\"", StringComparison.Ordinal))).ToArray();
        var states = await Task.WhenAll(ids.Select(Statuses.GetStateAsync));
        Assert.All(states, s => Assert.Equal(EventStates.Succeeded, s));
        Assert.True(perEvent.Max() <= 9, $"accepted, start and success ran {perEvent.Max()} commands on one event's status hash (at most 9 expected: HMGET, HSET, EXPIRE each); per event: {string.Join(",", perEvent)}");
    }
}
