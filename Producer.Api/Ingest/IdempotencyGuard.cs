using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using EventPipeline.Producer.Validation;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.Ingest;

/// <summary>What the guard decided about one submission.</summary>
public enum ClaimOutcome
{
    /// <summary>Every event is either new (reserved for this request) or a repeat; publish the new ones.</summary>
    Claimed,

    /// <summary>Another request is publishing one of these events right now: answer 409 and let the client retry.</summary>
    InFlight,

    /// <summary>The Idempotency-Key was used before for a different body: answer 422.</summary>
    KeyReused,
}

/// <summary>An event of this request that was accepted before (same id, or same Idempotency-Key): not published again.</summary>
public sealed record RepeatedEvent(string Id, string? Lane, string State);

/// <param name="Requested">the request's events in order, with the ids they have (a repeated key maps to the first request's ids).</param>
/// <param name="Fresh">the events to publish now.</param>
public sealed record IdempotencyClaim(
    ClaimOutcome Outcome,
    IReadOnlyList<ValidatedEvent> Requested,
    IReadOnlyList<ValidatedEvent> Fresh,
    IReadOnlyList<RepeatedEvent> Repeats,
    string Token)
{
    public static IdempotencyClaim Conflict(ClaimOutcome outcome) => new(outcome, [], [], [], "");

    public static IdempotencyClaim Unguarded(IReadOnlyList<ValidatedEvent> events) => new(ClaimOutcome.Claimed, events, events, [], "");
}

/// <summary>
/// Owns "a repeat enqueues nothing new", on one rule: <b>the ids a request stands for are fixed the first time its
/// Idempotency-Key (or a client-given id) is seen, and are never minted again.</b>
/// <list type="number">
/// <item>An <c>Idempotency-Key</c> is bound to its body hash and its event ids by one <c>SET NX</c> for the whole
/// retention window. The binding is never deleted or replaced — not on a 409, a 503, a timeout or a crash — so every
/// retry under the key gets the same ids, whatever happened to the earlier tries.</item>
/// <item>Each guarded id (under a key, or given by the client) has a reservation: <c>pending:&lt;token&gt;</c> while one
/// request publishes it (a concurrent copy gets 409 instead of publishing it too), <c>held:io</c> once RabbitMQ
/// confirmed an I/O-lane event (a repeat is answered from it; a CPU-lane event's status, written by the same script as
/// its stream entry, answers instead). A write that failed or is in doubt frees the reservation, so the
/// retry publishes the <i>same</i> id again. That is harmless: a status never moves back from a final state and
/// downstream calls carry the id as their <c>Idempotency-Key</c>.</item>
/// </list>
/// The reservations only spare the brokers a second copy; the guarantee rests on rule 1.
/// A request whose events all go straight into the CPU lane does not come here: <see cref="CpuLaneSubmission"/> applies
/// both rules in the same script as its publish (one round trip), and its new events need no reservation.
/// Events with a server-generated id and no Idempotency-Key need no reservation (nobody can repeat them), so such
/// I/O-lane submissions do not depend on Redis.
/// </summary>
public sealed class IdempotencyGuard(IConnectionMultiplexer redis, IOptions<IngestOptions> ingest, IOptions<StatusOptions> status)
{
    public const string HeaderName = "Idempotency-Key";
    public const int MaxKeyLength = 255;

    // KEYS: idempotency key. ARGV: the binding {body hash, ids}, retention (ms).
    // Returns the binding stored by the first request with this key, or false when this call stored it.
    private const string BindKeyScript = """
        local existing = redis.call('GET', KEYS[1])
        if existing then return existing end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return false
        """;

    // KEYS: pairs (status hash, reservation) per id. ARGV: token, pending TTL (ms).
    // Returns per id: 'known' (has a status), 'held:<lane>' (confirmed earlier), 'pending:<token>' (in flight), or 'free'.
    // Reserves the free ids only when no id is in flight for another request.
    private const string ReserveIdsScript = """
        local results = {}
        local blocked = false
        for i = 1, #KEYS, 2 do
          local r
          if redis.call('EXISTS', KEYS[i]) == 1 then
            r = 'known'
          else
            r = redis.call('GET', KEYS[i + 1]) or 'free'
          end
          if string.sub(r, 1, 8) == 'pending:' and r ~= 'pending:' .. ARGV[1] then blocked = true end
          results[#results + 1] = r
        end
        if not blocked then
          for i = 1, #KEYS, 2 do
            if results[(i + 1) / 2] == 'free' then
              redis.call('SET', KEYS[i + 1], 'pending:' .. ARGV[1], 'PX', ARGV[2])
            end
          end
        end
        return results
        """;

    // Frees each reservation only while it still holds this request's pending value.
    private const string ReleaseScript = """
        for i = 1, #KEYS do
          if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
        end
        return 1
        """;

    private IDatabase Db => redis.GetDatabase();

    /// <summary>While the broker write is in flight: long enough to outlive it, short enough that a crashed API frees the ids soon.</summary>
    private TimeSpan PendingTtl => ingest.Value.BrokerTimeout * 2 + TimeSpan.FromSeconds(5);

    /// <summary>Test seam: runs between fixing a request's ids and reserving them, where two requests can interleave.</summary>
    internal Func<Task>? AfterIdsFixed { get; set; }

    public static bool NeedsClaim(string? idempotencyKey, IReadOnlyList<ValidatedEvent> events) =>
        idempotencyKey is not null || events.Any(e => e.ClientGivenId);

    /// <summary>Fixes the request's ids, then reserves them. <paramref name="scope"/> keeps one client's keys apart from another's.</summary>
    /// <remarks>Like every method here, fails with a <see cref="RedisException"/> or a timeout when Redis does (the
    /// connection-loss race included, <see cref="RedisCallFailure"/>): the callers' 503s name what may be held.</remarks>
    public Task<IdempotencyClaim> ClaimAsync(string? idempotencyKey, string scope, ReadOnlyMemory<byte> body, IReadOnlyList<ValidatedEvent> events) =>
        ClaimOnceAsync(idempotencyKey, scope, body, events).AsRedisFailure();

    private async Task<IdempotencyClaim> ClaimOnceAsync(string? idempotencyKey, string scope, ReadOnlyMemory<byte> body, IReadOnlyList<ValidatedEvent> events)
    {
        var requested = events;
        if (idempotencyKey is not null)
        {
            var fixedIds = await FixIdsAsync(KeyOf(scope, idempotencyKey), Hash(body.Span), events);
            if (fixedIds is null)
            {
                return IdempotencyClaim.Conflict(ClaimOutcome.KeyReused);
            }

            // Under a key every event is guarded, generated ids included, so a repeat finds them.
            requested = [.. events.Zip(fixedIds, (e, id) => e with { Id = id, ClientGivenId = true })];
        }

        if (AfterIdsFixed is { } pause)
        {
            await pause();
        }

        return await ReserveAsync(requested);
    }

    /// <summary>
    /// Rule 1: the ids bound to the key — this request's own if it is the first, else the first request's. Null when the
    /// key is bound to a different body. A generated id is derived from the key and the body
    /// (<see cref="CpuLaneSubmission.DerivedId"/>), as the CPU lane's script does: a key bound here (a timed or I/O-lane
    /// try) stands for the same ids as a later try of the same request on the CPU lane's path, whose 503 names them
    /// without reading the binding. Only bindings made before ids were derived hold other ids.
    /// </summary>
    private async Task<string[]?> FixIdsAsync(RedisKey key, string bodyHash, IReadOnlyList<ValidatedEvent> events)
    {
        var binding = new KeyBinding(bodyHash, [.. events.Select((e, i) => e.ClientGivenId ? e.Id : CpuLaneSubmission.DerivedId(key, bodyHash, i))]);
        var stored = await Db.ScriptEvaluateAsync(BindKeyScript, [key],
            [JsonSerializer.Serialize(binding), (long)status.Value.Retention.TotalMilliseconds]);
        if (stored.IsNull)
        {
            return binding.Ids;
        }

        var earlier = JsonSerializer.Deserialize<KeyBinding>(stored.ToString())!;
        return earlier.BodyHash == bodyHash && earlier.Ids.Length == events.Count ? earlier.Ids : null;
    }

    /// <summary>Rule 2: reserves the guarded ids that are free; reports the ones held or known as repeats.</summary>
    private async Task<IdempotencyClaim> ReserveAsync(IReadOnlyList<ValidatedEvent> requested)
    {
        var token = Guid.NewGuid().ToString("N");
        var toReserve = requested.Where(e => e.ClientGivenId).ToList();
        var reservations = new Dictionary<string, string>(StringComparer.Ordinal);
        if (toReserve.Count > 0)
        {
            var keys = toReserve.SelectMany(e => new RedisKey[] { EventStatusStore.Key(e.Id), ReservationKey(e.Id) }).ToArray();
            var results = (RedisValue[])(await Db.ScriptEvaluateAsync(ReserveIdsScript, keys, [token, (long)PendingTtl.TotalMilliseconds]))!;
            for (var i = 0; i < toReserve.Count; i++)
            {
                reservations[toReserve[i].Id] = results[i].ToString();
            }
        }

        var fresh = new List<ValidatedEvent>();
        var repeats = new List<RepeatedEvent>();
        foreach (var e in requested)
        {
            var r = reservations.GetValueOrDefault(e.Id, "free");
            if (r == "free")
            {
                fresh.Add(e);
            }
            else if (r.StartsWith("pending:", StringComparison.Ordinal))
            {
                // Another request is publishing this event right now; the script reserved nothing for us, and the ids
                // stay bound to the key, so the client's retry finds the same ones.
                return IdempotencyClaim.Conflict(ClaimOutcome.InFlight);
            }
            else
            {
                repeats.Add(await DescribeRepeatAsync(e.Id, r));
            }
        }

        return new IdempotencyClaim(ClaimOutcome.Claimed, requested, fresh, repeats, token);
    }

    /// <summary>The broker confirmed these events: a repeat within the retention window is answered without publishing.</summary>
    public Task ConfirmAsync(IReadOnlyList<ValidatedEvent> confirmed) => ConfirmOnceAsync(confirmed).AsRedisFailure();

    private async Task ConfirmOnceAsync(IReadOnlyList<ValidatedEvent> confirmed)
    {
        var retention = status.Value.Retention;
        var batch = Db.CreateBatch();
        var writes = confirmed.Where(e => e.ClientGivenId)
            .Select(e => batch.StringSetAsync(ReservationKey(e.Id), "held:" + e.Lane, retention))
            .ToList();
        batch.Execute();
        await Task.WhenAll(writes);
    }

    /// <summary>
    /// The broker did not confirm these events (refused, unreachable, or no answer in time — then it may hold them):
    /// free their reservations so the client's retry publishes the same ids again.
    /// </summary>
    public Task ReleaseAsync(IdempotencyClaim claim, IReadOnlyList<ValidatedEvent> unconfirmed) => ReleaseOnceAsync(claim, unconfirmed).AsRedisFailure();

    private async Task ReleaseOnceAsync(IdempotencyClaim claim, IReadOnlyList<ValidatedEvent> unconfirmed)
    {
        var keys = unconfirmed.Where(e => e.ClientGivenId).Select(e => ReservationKey(e.Id)).ToArray();
        if (keys.Length > 0)
        {
            await Db.ScriptEvaluateAsync(ReleaseScript, keys, ["pending:" + claim.Token]);
        }
    }

    private async Task<RepeatedEvent> DescribeRepeatAsync(string id, string reservation)
    {
        var fields = await Db.HashGetAsync(EventStatusStore.Key(id), ["lane", "state"]);
        if (!fields[1].IsNull)
        {
            return new RepeatedEvent(id, fields[0].IsNull ? null : fields[0].ToString(), fields[1].ToString());
        }

        // Confirmed by the broker, but its status is not written (yet): it is held, so it counts as accepted.
        return new RepeatedEvent(id, reservation.StartsWith("held:", StringComparison.Ordinal) ? reservation[5..] : null, Contracts.EventStates.Accepted);
    }

    internal static RedisKey ReservationKey(string id) => $"ingest:{id}";

    /// <summary>Keys are stored hashed with the caller's scope: the raw header value never lands in Redis.</summary>
    internal static RedisKey KeyOf(string scope, string idempotencyKey) =>
        "idem:" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(scope + "\n" + idempotencyKey)));

    internal static string Hash(ReadOnlySpan<byte> body) => Convert.ToHexStringLower(SHA256.HashData(body));

    internal sealed record KeyBinding(string BodyHash, string[] Ids);
}
