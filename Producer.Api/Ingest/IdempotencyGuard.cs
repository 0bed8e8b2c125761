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
    string Token,
    RedisKey? Key,
    string? KeyValue)
{
    public static IdempotencyClaim Conflict(ClaimOutcome outcome) => new(outcome, [], [], [], "", null, null);

    public static IdempotencyClaim Unguarded(IReadOnlyList<ValidatedEvent> events) => new(ClaimOutcome.Claimed, events, events, [], "", null, null);
}

/// <summary>
/// Owns "a repeat enqueues nothing": before anything is published, the request's <c>Idempotency-Key</c> and every
/// client-given event id are reserved in Redis with SET-NX semantics (Lua scripts, so two concurrent requests cannot
/// both win). A reservation is short-lived while the broker write is in flight, kept for the status retention once the
/// broker confirmed, and released when the write failed so that the client's retry can go through.
/// Events with a server-generated id and no Idempotency-Key need no reservation (nobody can repeat them), so such
/// I/O-lane submissions do not depend on Redis.
/// </summary>
public sealed class IdempotencyGuard(IConnectionMultiplexer redis, IOptions<IngestOptions> ingest, IOptions<StatusOptions> status)
{
    public const string HeaderName = "Idempotency-Key";
    public const int MaxKeyLength = 255;

    // KEYS: idempotency key. ARGV: value to store, pending TTL (ms). Returns the stored value of an earlier request, or false.
    private const string ClaimKeyScript = """
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

    // Deletes each key only while it still holds this request's pending value.
    private const string ReleaseScript = """
        for i = 1, #KEYS do
          local v = redis.call('GET', KEYS[i])
          if v == ARGV[i] then redis.call('DEL', KEYS[i]) end
        end
        return 1
        """;

    private IDatabase Db => redis.GetDatabase();

    /// <summary>While the broker write is in flight: long enough to outlive it, short enough that a crashed API frees the ids soon.</summary>
    private TimeSpan PendingTtl => ingest.Value.BrokerTimeout * 2 + TimeSpan.FromSeconds(5);

    public static bool NeedsClaim(string? idempotencyKey, IReadOnlyList<ValidatedEvent> events) =>
        idempotencyKey is not null || events.Any(e => e.ClientGivenId);

    /// <summary>Reserves the request. <paramref name="scope"/> keeps one client's keys apart from another's.</summary>
    public async Task<IdempotencyClaim> ClaimAsync(string? idempotencyKey, string scope, ReadOnlyMemory<byte> body, IReadOnlyList<ValidatedEvent> events)
    {
        var token = Guid.NewGuid().ToString("N");
        var pendingMs = (long)PendingTtl.TotalMilliseconds;
        var requested = events;
        RedisKey? key = null;
        string? keyValue = null;

        if (idempotencyKey is not null)
        {
            key = KeyOf(scope, idempotencyKey);
            var record = new KeyRecord(Hash(body.Span), [.. events.Select(e => e.Id)]);
            keyValue = JsonSerializer.Serialize(record);
            var stored = await Db.ScriptEvaluateAsync(ClaimKeyScript, [key.Value], [keyValue, pendingMs]);
            if (!stored.IsNull)
            {
                var earlier = JsonSerializer.Deserialize<KeyRecord>(stored.ToString())!;
                if (earlier.BodyHash != record.BodyHash || earlier.Ids.Length != events.Count)
                {
                    return IdempotencyClaim.Conflict(ClaimOutcome.KeyReused);
                }

                // The same request again: its events are the ones the first request was given, ids included.
                requested = [.. events.Zip(earlier.Ids, (e, id) => e with { Id = id, ClientGivenId = true })];
                keyValue = null; // the key belongs to the first request
            }
            else
            {
                // Under a fresh key every event is reserved, generated ids included, so a repeat finds them.
                requested = [.. events.Select(e => e with { ClientGivenId = true })];
            }
        }

        var toReserve = requested.Where(e => e.ClientGivenId).ToList();
        var reservations = new Dictionary<string, string>(StringComparer.Ordinal);
        if (toReserve.Count > 0)
        {
            var keys = toReserve.SelectMany(e => new RedisKey[] { EventStatusStore.Key(e.Id), ReservationKey(e.Id) }).ToArray();
            var results = (RedisValue[])(await Db.ScriptEvaluateAsync(ReserveIdsScript, keys, [token, pendingMs]))!;
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
                // Another request is publishing this event right now (the script reserved nothing for us).
                if (keyValue is not null)
                {
                    await Db.ScriptEvaluateAsync(ReleaseScript, [key!.Value], [keyValue]);
                }

                return IdempotencyClaim.Conflict(ClaimOutcome.InFlight);
            }
            else
            {
                repeats.Add(await DescribeRepeatAsync(e.Id, r));
            }
        }

        return new IdempotencyClaim(ClaimOutcome.Claimed, requested, fresh, repeats, token, key, keyValue);
    }

    /// <summary>The broker confirmed these events: keep their reservations (and the key) for the retention window.</summary>
    public async Task ConfirmAsync(IdempotencyClaim claim, IReadOnlyList<ValidatedEvent> published)
    {
        var retention = status.Value.Retention;
        var batch = Db.CreateBatch();
        var writes = new List<Task>();
        foreach (var e in published.Where(e => e.ClientGivenId))
        {
            writes.Add(batch.StringSetAsync(ReservationKey(e.Id), "held:" + e.Lane, retention));
        }

        if (claim.KeyValue is not null)
        {
            writes.Add(batch.KeyExpireAsync(claim.Key!.Value, retention));
        }

        batch.Execute();
        await Task.WhenAll(writes);
    }

    /// <summary>
    /// The broker did not take these events: free their reservations so the client's retry can publish them. The key
    /// is dropped only when nothing of the request was published; otherwise a retry under it must find the same ids.
    /// </summary>
    public async Task ReleaseAsync(IdempotencyClaim claim, IReadOnlyList<ValidatedEvent> unpublished, bool anyPublished)
    {
        var keys = new List<RedisKey>();
        var values = new List<RedisValue>();
        foreach (var e in unpublished.Where(e => e.ClientGivenId))
        {
            keys.Add(ReservationKey(e.Id));
            values.Add("pending:" + claim.Token);
        }

        if (claim.KeyValue is not null && !anyPublished)
        {
            keys.Add(claim.Key!.Value);
            values.Add(claim.KeyValue);
        }

        if (keys.Count > 0)
        {
            await Db.ScriptEvaluateAsync(ReleaseScript, [.. keys], [.. values]);
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

    private static RedisKey ReservationKey(string id) => $"ingest:{id}";

    /// <summary>Keys are stored hashed with the caller's scope: the raw header value never lands in Redis.</summary>
    private static RedisKey KeyOf(string scope, string idempotencyKey) =>
        "idem:" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(scope + "\n" + idempotencyKey)));

    private static string Hash(ReadOnlySpan<byte> body) => Convert.ToHexStringLower(SHA256.HashData(body));

    private sealed record KeyRecord(string BodyHash, string[] Ids);
}
