using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using EventPipeline.Contracts;
using EventPipeline.Producer.Validation;
using EventPipeline.ServiceDefaults;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.Ingest;

/// <summary>
/// A guarded CPU-lane request (client-given ids or an <c>Idempotency-Key</c>; every event for the CPU lane, none timed)
/// in <b>one Redis round trip</b>: one script binds the key at first sight, checks every id against the statuses and the
/// in-flight reservations, and writes each new event's <c>accepted</c> status with its stream entry. It holds
/// <see cref="IdempotencyGuard"/>'s rules and <see cref="CpuLanePublisher"/>'s in one atomic step:
/// <list type="bullet">
/// <item>under a key, an event the client gave no id gets one derived from the key, its scope and the body
/// (<see cref="DerivedId"/>), not a fresh one: every try of the same request stands for the same ids before Redis
/// answers, so a try whose reply never comes names in its 503 exactly the ids the key stands for (a fresh id per try
/// named ids that were never written, and not the ones held);</item>
/// <item>the key's binding (body hash, ids) is set with <c>SET</c> for the retention window the first time the key is
/// seen and never replaced. A repeat of the same request finds its own binding and is checked in the same script (one
/// round trip); a key bound to anything else answers with the binding and writes nothing — a different body is 422, a
/// binding with other ids for the same body (made before ids were derived) runs the script again with those ids;</item>
/// <item>an id with a status is a repeat, answered from that status; one an I/O-lane request holds (<c>held:io</c>) is a
/// repeat; one another request is publishing (<c>pending:</c>) makes the whole request a 409, with nothing written but
/// the key's binding;</item>
/// <item>every check runs before the first write (a script is not rolled back): a stream or a status key of the wrong
/// type fails the request with nothing written. A new event needs no in-flight reservation: its status is written in
/// the same step as its entry, and any later request sees the status.</item>
/// </list>
/// A reply that does not come in time may still have run: every event of the request is then in doubt (503).
/// </summary>
public sealed class CpuLaneSubmission(
    IConnectionMultiplexer redis, EventStatusStore statuses, RedisReplicaAcknowledgement replicas, IOptions<StatusOptions> status)
{
    // KEYS[1] stream, then per event its status hash and its reservation, then (with a key) the key's binding.
    // ARGV[1] lane, ARGV[2] acceptedAt (unix ms), ARGV[3] status ttl (s), ARGV[4] the binding to store ('' = no key),
    // ARGV[5] binding retention (ms), ARGV[6] n events, ARGV[7] t trace-context fields, then t name/value pairs, then
    // id, type, payload of each event (entry fields and order as CpuLaneStreams.NewEntry).
    // Returns { 'bound', binding } | { 'in-flight' } | { 'claimed', then kind, lane, state per event }, kind being
    // 'fresh' (written now), 'known' (has a status: its lane and state) or 'held' (an I/O-lane reservation: its lane).
    private static readonly IngestScript Script = new(EventStatusStore.RecordAcceptedLua + """
        local streamType = redis.call('TYPE', KEYS[1]).ok
        if streamType ~= 'stream' and streamType ~= 'none' then
          return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is not a stream')
        end
        local n = tonumber(ARGV[6])
        local binding = ARGV[4]
        local existing = false
        if binding ~= '' then
          existing = redis.call('GET', KEYS[2 + 2 * n])
          -- Bound to this very binding: a repeat of the same request (same body, so the same derived ids), checked here.
          if existing and existing ~= binding then return { 'bound', existing } end
        end
        local seen = {}
        local blocked = false
        for i = 1, n do
          local statusKey = KEYS[2 * i]
          local statusType = redis.call('TYPE', statusKey).ok
          if statusType == 'hash' then
            local f = redis.call('HMGET', statusKey, 'lane', 'state')
            seen[i] = { 'known', f[1] or '', f[2] or '' }
          elseif statusType ~= 'none' then
            return redis.error_reply('WRONGTYPE ' .. statusKey .. ' is not a status hash')
          else
            local r = redis.call('GET', KEYS[2 * i + 1])
            if not r then
              seen[i] = { 'fresh', '', '' }
            elseif string.sub(r, 1, 8) == 'pending:' then
              blocked = true
            elseif string.sub(r, 1, 5) == 'held:' then
              seen[i] = { 'held', string.sub(r, 6), '' }
            else
              seen[i] = { 'held', '', '' }
            end
          end
        end
        if binding ~= '' and not existing then redis.call('SET', KEYS[2 + 2 * n], binding, 'PX', ARGV[5]) end
        if blocked then return { 'in-flight' } end
        local first = 8 + 2 * tonumber(ARGV[7])
        local entry = { 'id', '', 'type', '', 'payload', '', 'acceptedAt', ARGV[2], 'attempt', '1' }
        for j = 8, first - 1 do entry[#entry + 1] = ARGV[j] end
        local reply = { 'claimed' }
        for i = 1, n do
          local a = first + (i - 1) * 3
          if seen[i][1] == 'fresh' and record_accepted(KEYS[2 * i], ARGV[a], ARGV[a + 1], ARGV[1], ARGV[2], ARGV[3], true) then
            entry[2], entry[4], entry[6] = ARGV[a], ARGV[a + 1], ARGV[a + 2]
            redis.call('XADD', KEYS[1], '*', unpack(entry))
          end
          reply[#reply + 1] = seen[i][1]
          reply[#reply + 1] = seen[i][2]
          reply[#reply + 1] = seen[i][3]
        end
        return reply
        """);

    /// <summary>The requests this step takes: guarded (else nothing needs checking), CPU lane only, none held for later.</summary>
    public static bool Takes(string? idempotencyKey, IReadOnlyList<ValidatedEvent> events) =>
        IdempotencyGuard.NeedsClaim(idempotencyKey, events) && events.All(e => e.Lane == Lanes.Cpu && !e.IsTimed);

    /// <returns>the claim: <see cref="IdempotencyClaim.Fresh"/> are in the stream now, <see cref="IdempotencyClaim.Repeats"/>
    /// were there before; or a conflict (422, 409) with nothing written but a new key's binding.</returns>
    /// <exception cref="BrokerUnavailableException">Redis refused, failed or did not answer in time (or too few replicas
    /// confirmed): every event of the request is uncertain.</exception>
    public async Task<IdempotencyClaim> SubmitAsync(string? idempotencyKey, string scope, ReadOnlyMemory<byte> body,
        IReadOnlyList<ValidatedEvent> events, DateTimeOffset acceptedAt, CancellationToken cancellationToken)
    {
        using var activity = PipelineTelemetry.ActivitySource.StartActivity($"{CpuLaneStreams.Stream} publish", ActivityKind.Producer);
        activity?.SetTag("messaging.system", "redis");
        activity?.SetTag("messaging.destination.name", CpuLaneStreams.Stream.ToString());
        activity?.SetTag("messaging.operation.type", "send");
        activity?.SetTag("messaging.batch.message_count", events.Count);
        var traceContext = LaneTraceContext.Inject(activity ?? Activity.Current);

        var requested = events;
        try
        {
            // Identified before the write: the replicas' acknowledgement must come from the server the script ran on.
            var primary = await replicas.PrimaryAsync();
            RedisResult[] reply;
            if (idempotencyKey is null)
            {
                reply = await RunAsync(requested, acceptedAt, traceContext, null, "", cancellationToken);
            }
            else
            {
                // Under a key every event is guarded, generated ids included, so a repeat finds them; a generated id is
                // derived from the key and the body, so this try names the same ids as every other try of the request.
                var keyOf = IdempotencyGuard.KeyOf(scope, idempotencyKey);
                var bodyHash = IdempotencyGuard.Hash(body.Span);
                requested = [.. events.Select((e, i) => e with
                {
                    Id = e.ClientGivenId ? e.Id : DerivedId(keyOf, bodyHash, i),
                    ClientGivenId = true,
                })];
                var binding = JsonSerializer.Serialize(new IdempotencyGuard.KeyBinding(bodyHash, [.. requested.Select(e => e.Id)]));
                reply = await RunAsync(requested, acceptedAt, traceContext, keyOf, binding, cancellationToken);
                if ((string?)reply[0] == "bound")
                {
                    var earlier = JsonSerializer.Deserialize<IdempotencyGuard.KeyBinding>((string)reply[1]!)!;
                    if (earlier.BodyHash != bodyHash || earlier.Ids.Length != events.Count)
                    {
                        return IdempotencyClaim.Conflict(ClaimOutcome.KeyReused);
                    }

                    // The key stands for the ids of its first request, whatever became of them (a binding made before
                    // ids were derived holds other ids for the same body).
                    requested = [.. requested.Zip(earlier.Ids, (e, id) => e with { Id = id })];
                    reply = await RunAsync(requested, acceptedAt, traceContext, null, "", cancellationToken);
                }
            }

            if ((string?)reply[0] == "in-flight")
            {
                return IdempotencyClaim.Conflict(ClaimOutcome.InFlight);
            }

            await replicas.WaitAsync(primary, cancellationToken);
            return Claim(requested, reply);
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex) || ex is OperationCanceledException)
        {
            activity?.SetStatus(ActivityStatusCode.Error, ex.Message);
            throw new BrokerUnavailableException(Lanes.Cpu, ex, [], requested);
        }
    }

    /// <summary>
    /// The id of the <paramref name="index"/>-th event of a request under a key when the client gave it none: 32 hex
    /// characters of SHA-256 over the hashed scoped key, the body's hash and the index. The same request (key, scope,
    /// body) always gets the same ids, a different body other ones, so a key reused after its retention window for a new
    /// body never meets the old events' statuses.
    /// </summary>
    internal static string DerivedId(RedisKey keyOf, string bodyHash, int index) =>
        Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes($"{keyOf}\n{bodyHash}\n{index}")).AsSpan(0, 16));

    private async Task<RedisResult[]> RunAsync(IReadOnlyList<ValidatedEvent> events, DateTimeOffset acceptedAt,
        NameValueEntry[] traceContext, RedisKey? bindingKey, string binding, CancellationToken cancellationToken)
    {
        var keys = new RedisKey[1 + events.Count * 2 + (bindingKey is null ? 0 : 1)];
        var values = new RedisValue[7 + traceContext.Length * 2 + events.Count * 3];
        keys[0] = CpuLaneStreams.Stream;
        values[0] = Lanes.Cpu;
        values[1] = acceptedAt.ToUnixTimeMilliseconds();
        values[2] = statuses.TtlSeconds;
        values[3] = binding;
        values[4] = (long)status.Value.Retention.TotalMilliseconds;
        values[5] = events.Count;
        values[6] = traceContext.Length;
        var v = 7;
        foreach (var field in traceContext)
        {
            values[v++] = field.Name;
            values[v++] = field.Value;
        }

        for (var i = 0; i < events.Count; i++)
        {
            var e = events[i];
            keys[1 + i * 2] = EventStatusStore.Key(e.Id);
            keys[2 + i * 2] = IdempotencyGuard.ReservationKey(e.Id);
            values[v++] = e.Id;
            values[v++] = e.Type;
            values[v++] = e.PayloadUtf8;
        }

        if (bindingKey is { } key)
        {
            keys[^1] = key;
        }

        return (RedisResult[])(await Script.EvaluateAsync(redis.GetDatabase(), keys, values, cancellationToken).AsRedisFailure().WaitAsync(cancellationToken))!;
    }

    private static IdempotencyClaim Claim(IReadOnlyList<ValidatedEvent> requested, RedisResult[] reply)
    {
        var fresh = new List<ValidatedEvent>(requested.Count);
        var repeats = new List<RepeatedEvent>();
        for (var i = 0; i < requested.Count; i++)
        {
            var kind = (string?)reply[1 + i * 3];
            var lane = (string?)reply[2 + i * 3];
            var state = (string?)reply[3 + i * 3];
            if (kind == "fresh")
            {
                fresh.Add(requested[i]);
            }
            else
            {
                // A status without a state yet, or an I/O-lane event its broker confirmed: it is held, so it counts as accepted.
                repeats.Add(new RepeatedEvent(requested[i].Id, string.IsNullOrEmpty(lane) ? null : lane,
                    string.IsNullOrEmpty(state) ? EventStates.Accepted : state));
            }
        }

        return new IdempotencyClaim(ClaimOutcome.Claimed, requested, fresh, repeats, "");
    }
}
