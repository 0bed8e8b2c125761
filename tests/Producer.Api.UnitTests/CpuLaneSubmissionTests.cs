using System.Text;
using System.Text.Json;
using EventPipeline.Producer.Ingest;
using EventPipeline.Producer.Validation;
using EventPipeline.Shared;
using EventPipeline.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.UnitTests;

/// <summary>
/// The guarded CPU-lane request's single script against a real redis-server: the idempotency guard's rules and the
/// publish's "no entry without its status" hold in one step, and a request that cannot go through writes nothing.
/// </summary>
public sealed class CpuLaneSubmissionTests : IAsyncLifetime
{
    private RedisServer _redis = null!;
    private ConnectionMultiplexer _connection = null!;

    public async Task InitializeAsync()
    {
        _redis = await RedisServer.StartAsync();
        _connection = await _redis.ConnectAsync();
    }

    public async Task DisposeAsync()
    {
        _connection.Dispose();
        await _redis.DisposeAsync();
    }

    private CpuLaneSubmission Submission()
    {
        var status = Options.Create(new StatusOptions());
        var replicas = new RedisReplicaAcknowledgement(_connection, Options.Create(new ConfigurationOptions()),
            Options.Create(new IngestOptions()), NullLogger<RedisReplicaAcknowledgement>.Instance);
        return new CpuLaneSubmission(_connection, new EventStatusStore(_connection, status), replicas, status);
    }

    private static ValidatedEvent Event(string id) => new(id, "noop.cpu", "cpu", "{}", ClientGivenId: true);

    private Task<IdempotencyClaim> SubmitAsync(ValidatedEvent[] events, string? key = null, string body = "{}") =>
        Submission().SubmitAsync(key, "scope", Encoding.UTF8.GetBytes(body), events, DateTimeOffset.UtcNow, CancellationToken.None);

    private async Task<int> EntriesAsync(string id) =>
        (await _connection.GetDatabase().StreamRangeAsync(CpuLaneStreams.Stream)).Count(e => (string?)e["id"] == id);

    [Fact]
    public async Task An_id_another_request_is_publishing_makes_the_request_a_conflict_that_writes_nothing()
    {
        // An I/O-lane request holds the id's in-flight reservation while RabbitMQ confirms it.
        var db = _connection.GetDatabase();
        var busy = $"busy-{Guid.NewGuid():N}";
        var free = $"free-{Guid.NewGuid():N}";
        await db.StringSetAsync($"ingest:{busy}", "pending:other-request", TimeSpan.FromMinutes(1));

        var claim = await SubmitAsync([Event(free), Event(busy)]);

        Assert.Equal(ClaimOutcome.InFlight, claim.Outcome);
        Assert.False(await db.KeyExistsAsync(EventStatusStore.Key(free)), "the other event of the refused request got a status");
        Assert.Equal(0, await EntriesAsync(free));
    }

    [Fact]
    public async Task A_status_key_of_the_wrong_type_fails_the_request_with_every_event_in_doubt_and_nothing_written()
    {
        var db = _connection.GetDatabase();
        var ids = Enumerable.Range(0, 3).Select(i => $"wrong-{i}-{Guid.NewGuid():N}").ToArray();
        await db.StringSetAsync(EventStatusStore.Key(ids[1]), "not a status hash");

        var failure = await Assert.ThrowsAsync<BrokerUnavailableException>(() => SubmitAsync([.. ids.Select(Event)]));

        Assert.Equal(ids, failure.Uncertain.Select(e => e.Id));
        Assert.False(await db.KeyExistsAsync(EventStatusStore.Key(ids[0])), "an event before the bad key was written");
        Assert.Equal(0, await EntriesAsync(ids[0]));
    }

    [Fact]
    public async Task A_repeat_is_answered_from_its_status_and_only_new_ids_get_an_entry()
    {
        var seen = $"seen-{Guid.NewGuid():N}";
        var fresh = $"fresh-{Guid.NewGuid():N}";
        Assert.Single((await SubmitAsync([Event(seen)])).Fresh);
        await _connection.GetDatabase().HashSetAsync(EventStatusStore.Key(seen), "state", "succeeded");

        var claim = await SubmitAsync([Event(seen), Event(fresh)]);

        Assert.Equal(ClaimOutcome.Claimed, claim.Outcome);
        Assert.Equal(fresh, Assert.Single(claim.Fresh).Id);
        var repeat = Assert.Single(claim.Repeats);
        Assert.Equal((seen, "cpu", "succeeded"), (repeat.Id, repeat.Lane, repeat.State));
        Assert.Equal(1, await EntriesAsync(seen));
        Assert.Equal(1, await EntriesAsync(fresh));
    }

    [Fact]
    public async Task A_key_keeps_the_ids_of_its_first_request_and_refuses_a_different_body()
    {
        var key = $"key-{Guid.NewGuid():N}";
        var first = await SubmitAsync([Event($"first-{Guid.NewGuid():N}") with { ClientGivenId = false }], key, """{"a":1}""");
        var id = Assert.Single(first.Fresh).Id;

        var again = await SubmitAsync([Event($"other-{Guid.NewGuid():N}") with { ClientGivenId = false }], key, """{"a":1}""");
        var different = await SubmitAsync([Event($"third-{Guid.NewGuid():N}") with { ClientGivenId = false }], key, """{"a":2}""");

        Assert.Equal(ClaimOutcome.Claimed, again.Outcome);
        Assert.Empty(again.Fresh);
        Assert.Equal(id, Assert.Single(again.Repeats).Id);
        Assert.Equal(ClaimOutcome.KeyReused, different.Outcome);
        Assert.Equal(1, await EntriesAsync(id));
        var binding = Assert.Single(_connection.GetServer(_connection.GetEndPoints()[0]).Keys(pattern: "idem:*").ToList());
        Assert.True(await _connection.GetDatabase().KeyTimeToLiveAsync(binding) > TimeSpan.FromHours(1),
            "the key's binding must last for the retention window");
    }

    [Fact]
    public async Task A_keyed_request_whose_only_try_gets_no_answer_from_redis_names_the_ids_its_key_stands_for()
    {
        var key = $"key-{Guid.NewGuid():N}";
        const string body = """{"b":1}""";
        var bound = Assert.Single((await SubmitAsync([Generated()], key, body)).Requested).Id;

        // The retry's only try: Redis takes the script but answers after the API gave up, so the API cannot read the
        // binding; what may be held is what the key stands for.
        var failure = await TryWhileRedisIsPausedAsync(key, body);

        var named = failure.Uncertain.Select(e => e.Id).ToArray();
        Assert.Empty(failure.Confirmed);
        Assert.True(named.SequenceEqual([bound]),
            $"the 503 named [{string.Join(", ", named)}] as maybe held, but the key stands for [{bound}]");
        var retry = await SubmitAsync([Generated()], key, body);
        Assert.Equal(named, retry.Requested.Select(e => e.Id));
        Assert.Equal(1, await EntriesAsync(bound));
    }

    /// <summary>One try of a keyed request while redis-server is paused (SIGSTOP, always resumed): the API gives up after
    /// 500 ms without Redis's answer.</summary>
    private async Task<BrokerUnavailableException> TryWhileRedisIsPausedAsync(string key, string body)
    {
        using var giveUp = new CancellationTokenSource(TimeSpan.FromMilliseconds(500));
        await using var pause = ProcessPause.Of(_redis.Pid);
        return await Assert.ThrowsAsync<BrokerUnavailableException>(() => Submission().SubmitAsync(
            key, "scope", Encoding.UTF8.GetBytes(body), [Generated()], DateTimeOffset.UtcNow, giveUp.Token));
    }

    [Fact]
    public async Task A_submission_after_redis_lost_its_scripts_is_written_once_and_the_next_one_takes_one_round_trip()
    {
        // A restarted or failed-over server knows no script: the first submission still writes its event once.
        var first = $"flushed-{Guid.NewGuid():N}";
        Assert.Single((await SubmitAsync([Event($"warm-{Guid.NewGuid():N}")])).Fresh);
        await using (var admin = await ConnectionMultiplexer.ConnectAsync(_redis.ConnectionString + ",allowAdmin=true"))
        {
            await admin.GetServers().Single().ScriptFlushAsync();
        }

        Assert.Single((await SubmitAsync([Event(first)])).Fresh);
        Assert.Equal(1, await EntriesAsync(first));
        Assert.True(await _connection.GetDatabase().KeyExistsAsync(EventStatusStore.Key(first)), "the event has no status");

        await using var monitor = await RedisMonitor.StartAsync(_redis);
        var next = $"next-{Guid.NewGuid():N}";
        Assert.Single((await SubmitAsync([Event(next)])).Fresh);
        var scripts = (await monitor.SentNamingAsync("EVAL", _connection.GetDatabase())).ToList();
        Assert.True(scripts.Count == 1, $"a submission after the reload ran {scripts.Count} scripts:\n{string.Join("\n", scripts)}");
        Assert.Equal(1, await EntriesAsync(next));
    }

    [Fact]
    public async Task A_script_redis_does_not_know_is_not_sent_again_as_text_once_the_request_has_given_up()
    {
        // NOSCRIPT proves nothing ran; the text is the second try. A request that gave up meanwhile (its broker timeout,
        // the client gone) has answered 503 naming its events as possibly held: nothing of it may be written after that.
        var key = $"late-{Guid.NewGuid():N}";
        var script = new IngestScript($"-- {key}\nreturn redis.call('INCR', KEYS[1])");
        using var gaveUp = new CancellationTokenSource();
        gaveUp.Cancel();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            script.EvaluateAsync(_connection.GetDatabase(), [key], [], gaveUp.Token));

        var db = _connection.GetDatabase();
        var loaded = (bool[])(await db.ExecuteAsync("SCRIPT", "EXISTS", Convert.ToHexStringLower(
            System.Security.Cryptography.SHA1.HashData(System.Text.Encoding.UTF8.GetBytes($"-- {key}\nreturn redis.call('INCR', KEYS[1])")))))!;
        Assert.False(loaded[0], "the script's text was sent after the request had given up (Redis loaded it)");
        Assert.False(await db.KeyExistsAsync(key), "the script ran after the request had given up");
    }

    [Fact]
    public async Task A_repeat_under_a_key_is_checked_and_answered_in_one_round_trip()
    {
        var key = $"key-{Guid.NewGuid():N}";
        const string body = """{"r":1}""";
        var id = Assert.Single((await SubmitAsync([Generated()], key, body)).Fresh).Id;
        await using var monitor = await RedisMonitor.StartAsync(_redis);

        var repeat = await SubmitAsync([Generated()], key, body);

        Assert.Equal(id, Assert.Single(repeat.Repeats).Id);
        Assert.Empty(repeat.Fresh);
        var scripts = (await monitor.SentNamingAsync("EVAL", _connection.GetDatabase())).ToList();
        Assert.True(scripts.Count == 1, $"a repeat under a key ran {scripts.Count} scripts:\n{string.Join("\n", scripts)}");
        Assert.Equal(1, await EntriesAsync(id));
    }

    [Fact]
    public async Task A_keyed_request_first_tried_on_the_general_path_names_in_its_503_the_ids_its_key_stands_for()
    {
        // Try 1 was timed (notBefore ahead), so the general path bound the key; the retry came after notBefore, so it is
        // untimed and goes the CPU lane's one-script way, and Redis does not answer it.
        var key = $"key-{Guid.NewGuid():N}";
        const string body = """{"t":1}""";
        var guard = new IdempotencyGuard(_connection, Options.Create(new IngestOptions()), Options.Create(new StatusOptions()));
        var first = await guard.ClaimAsync(key, "scope", Encoding.UTF8.GetBytes(body),
            [Generated() with { NotBefore = DateTimeOffset.UtcNow.AddSeconds(2) }]);
        var bound = Assert.Single(first.Requested).Id;

        var failure = await TryWhileRedisIsPausedAsync(key, body);

        var named = failure.Uncertain.Select(e => e.Id).ToArray();
        Assert.True(named.SequenceEqual([bound]),
            $"the 503 named [{string.Join(", ", named)}] as maybe held, but the key (bound on the general path) stands for [{bound}]");
    }

    [Fact]
    public async Task A_key_bound_to_other_ids_for_the_same_body_keeps_them_in_answers_entries_and_503s()
    {
        // A binding with ids that are not the derived ones, as bindings were written before ids were derived.
        var key = $"key-{Guid.NewGuid():N}";
        const string body = """{"o":1}""";
        var old = Guid.CreateVersion7().ToString("N");
        var db = _connection.GetDatabase();
        await db.StringSetAsync(IdempotencyGuard.KeyOf("scope", key),
            JsonSerializer.Serialize(new IdempotencyGuard.KeyBinding(IdempotencyGuard.Hash(Encoding.UTF8.GetBytes(body)), [old])),
            TimeSpan.FromHours(1));

        // A status key of the wrong type fails the run with the bound ids: the 503 names them, not the derived ones.
        await db.StringSetAsync(EventStatusStore.Key(old), "not a status hash");
        var failure = await Assert.ThrowsAsync<BrokerUnavailableException>(() => SubmitAsync([Generated()], key, body));
        Assert.Equal([old], failure.Uncertain.Select(e => e.Id));
        await db.KeyDeleteAsync(EventStatusStore.Key(old));

        var first = await SubmitAsync([Generated()], key, body);
        var again = await SubmitAsync([Generated()], key, body);

        Assert.Equal(ClaimOutcome.Claimed, first.Outcome);
        Assert.Equal(old, Assert.Single(first.Fresh).Id);
        Assert.Equal([old], first.Requested.Select(e => e.Id));
        Assert.Empty(again.Fresh);
        Assert.Equal(old, Assert.Single(again.Repeats).Id);
        Assert.Equal(1, await EntriesAsync(old));
        var derived = CpuLaneSubmission.DerivedId(IdempotencyGuard.KeyOf("scope", key), IdempotencyGuard.Hash(Encoding.UTF8.GetBytes(body)), 0);
        Assert.Equal(0, await EntriesAsync(derived));
    }

    /// <summary>An event whose id the API generated (a new one on every try, as the validator does).</summary>
    private static ValidatedEvent Generated() => Event(Guid.CreateVersion7().ToString("N")) with { ClientGivenId = false };
}
