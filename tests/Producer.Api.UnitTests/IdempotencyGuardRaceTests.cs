using System.Text;
using EventPipeline.Producer.Ingest;
using EventPipeline.Producer.Validation;
using EventPipeline.Shared;
using EventPipeline.Testing;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.UnitTests;

/// <summary>
/// The guard's rule, "the ids of an Idempotency-Key are fixed at first sight and never minted again", under the
/// interleavings two racing requests can produce. The test seam between the guard's two steps makes them deterministic.
/// </summary>
public sealed class IdempotencyGuardRaceTests : IAsyncLifetime
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

    private IdempotencyGuard NewGuard() =>
        new(_connection, Options.Create(new IngestOptions()), Options.Create(new StatusOptions()));

    private static ValidatedEvent NewEvent() =>
        new(Guid.NewGuid().ToString("N"), "noop.cpu", "cpu", "{}");

    [Fact]
    public async Task Key_owner_that_loses_the_reservation_race_keeps_the_keys_ids_for_its_retry()
    {
        var body = Encoding.UTF8.GetBytes("""{"type":"noop.cpu","payload":{}}""");
        const string key = "race-key";
        var ownerPaused = new TaskCompletionSource();
        var ownerMayGoOn = new TaskCompletionSource();
        var owner = NewGuard();
        owner.AfterIdsFixed = async () =>
        {
            ownerPaused.SetResult();
            await ownerMayGoOn.Task;
        };
        var other = NewGuard();

        // R1 binds the key to its new id, then stalls before reserving it.
        var first = owner.ClaimAsync(key, "scope", body, [NewEvent()]);
        await ownerPaused.Task.WaitAsync(TimeSpan.FromSeconds(30));

        // R2 (same key, same body) adopts R1's id and reserves it first.
        var second = await other.ClaimAsync(key, "scope", body, [NewEvent()]);
        Assert.Equal(ClaimOutcome.Claimed, second.Outcome);
        var id = Assert.Single(second.Fresh).Id;

        // While R2 publishes, R1 finds its id in flight for R2 and answers 409.
        ownerMayGoOn.SetResult();
        Assert.Equal(ClaimOutcome.InFlight, (await first.WaitAsync(TimeSpan.FromSeconds(30))).Outcome);

        // R2's broker confirms.
        await other.ConfirmAsync(second.Fresh);

        // R1's client retries as told: the key still stands for the same id, which is held, so nothing new is published.
        var retry = await NewGuard().ClaimAsync(key, "scope", body, [NewEvent()]);
        Assert.Equal(ClaimOutcome.Claimed, retry.Outcome);
        Assert.Empty(retry.Fresh);
        Assert.Equal(id, Assert.Single(retry.Requested).Id);
        Assert.Equal(id, Assert.Single(retry.Repeats).Id);
    }

    [Fact]
    public async Task Key_whose_publish_failed_gives_its_retry_the_same_ids_to_publish_again()
    {
        var body = Encoding.UTF8.GetBytes("""{"events":[]}""");
        var guard = NewGuard();
        var first = await guard.ClaimAsync("failed-key", "scope", body, [NewEvent(), NewEvent()]);
        var ids = first.Fresh.Select(e => e.Id).ToList();

        // The broker did not confirm (refused, or no answer in time: then it may hold them).
        await guard.ReleaseAsync(first, first.Fresh);

        var retry = await guard.ClaimAsync("failed-key", "scope", body, [NewEvent(), NewEvent()]);
        Assert.Equal(ClaimOutcome.Claimed, retry.Outcome);
        Assert.Equal(ids, retry.Fresh.Select(e => e.Id));
    }

    [Fact]
    public async Task Key_binding_outlives_the_in_flight_window_without_a_confirm()
    {
        // An API that dies between publishing and confirming never extends anything: the binding must already last
        // for the retention window, not for the short in-flight reservation.
        var body = Encoding.UTF8.GetBytes("""{"type":"noop.cpu","payload":{}}""");
        var claim = await NewGuard().ClaimAsync("crash-key", "scope", body, [NewEvent()]);
        Assert.Equal(ClaimOutcome.Claimed, claim.Outcome);

        var bindings = _connection.GetServer(_connection.GetEndPoints()[0]).Keys(pattern: "idem:*").ToList();
        var ttl = await _connection.GetDatabase().KeyTimeToLiveAsync(Assert.Single(bindings));
        Assert.NotNull(ttl);
        Assert.True(ttl > new IngestOptions().BrokerTimeout * 2 + TimeSpan.FromSeconds(5),
            $"the key's binding expires in {ttl}, as soon as an in-flight reservation would");
    }
}
