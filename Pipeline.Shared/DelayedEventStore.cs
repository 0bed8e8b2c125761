using System.Diagnostics.Metrics;
using EventPipeline.Contracts;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Shared;

public sealed class SchedulingOptions
{
    /// <summary>The furthest ahead an event may be scheduled (<c>notBefore</c>, <c>delay</c>).</summary>
    public TimeSpan MaxDelay { get; set; } = TimeSpan.FromDays(30);

    /// <summary>A <c>notBefore</c> this far in the past still counts as "now" (client clocks drift); further back is a 400.</summary>
    public TimeSpan PastTolerance { get; set; } = TimeSpan.FromMinutes(5);

    /// <summary>How often a promoter looks for due events that other processes scheduled (its own wake it at once).</summary>
    public TimeSpan PollInterval { get; set; } = TimeSpan.FromMilliseconds(250);

    /// <summary>How long an I/O-lane promoter owns a due event it is publishing before another promoter may take it over.</summary>
    public TimeSpan IoClaimLease { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Due events moved per promotion pass and lane.</summary>
    public int PromoteBatch { get; set; } = 500;

    /// <summary>
    /// A periodic schedule's tick older than this when a scheduler sees it was missed (nothing ran): it follows the
    /// schedule's misfire policy instead of firing every missed tick.
    /// </summary>
    public TimeSpan MisfireThreshold { get; set; } = TimeSpan.FromSeconds(10);

    public bool Enabled { get; set; } = true;
}

/// <summary>An event to hold until <see cref="NotBefore"/>; <see cref="Body"/> is what the promoter puts into the lane.</summary>
public sealed record DelayedEvent(string Id, string Type, string Lane, string Body, DateTimeOffset NotBefore, DateTimeOffset? ExpiresAt);

/// <summary>An I/O-lane event this promoter claimed: publish <see cref="Body"/>, then <see cref="DelayedEventStore.FinishIoAsync"/>.</summary>
public sealed record ClaimedEvent(string Id, string Body, long LeaseUntilMs);

/// <summary>
/// Delayed events live in Redis, never in a process: one sorted set per lane (<c>events.{lane}.scheduled</c>, member =
/// event id, score = due time in unix ms) and the event's body (<c>events.scheduled.body:{id}</c>), written in the same
/// script as the status <c>scheduled</c>, before the API answers 202. A promoter in any number of processes moves due
/// events into their lane:
/// <list type="bullet">
/// <item>CPU lane: one script removes the entry and adds the stream entry (status <c>accepted</c>) — atomic, so any number
/// of promoters never add an event twice.</item>
/// <item>I/O lane (RabbitMQ cannot join a Redis script): a script claims the due entries with a lease (score = now + lease),
/// the promoter publishes them with confirms, then a second script removes each entry only if it still holds that lease.
/// A promoter that dies between the publish and the removal leaves the entry to be published again after the lease with
/// the same event id: a second copy, which the I/O worker acknowledges without running when the event already succeeded.</item>
/// </list>
/// Only an event still <c>scheduled</c> is moved: a cancelled one is dropped, one past its <c>expiresAt</c> becomes
/// <c>expired</c> without entering the lane.
/// </summary>
public sealed class DelayedEventStore(IConnectionMultiplexer redis, EventStatusStore statuses, IOptions<SchedulingOptions> options)
{
    public const string BodyPrefix = "events.scheduled.body:";

    public static RedisKey SetOf(string lane) => $"events.{lane}.scheduled";

    public static RedisKey BodyKey(string id) => BodyPrefix + id;

    // KEYS: status, set, body. A status that exists already is left alone (the event is known: nothing is held twice).
    private static readonly LuaScript HoldScript = LuaScript.Prepare("""
        if redis.call('HSETNX', @status, 'state', 'scheduled') == 0 then return 0 end
        redis.call('HSET', @status, 'id', @id, 'type', @type, 'lane', @lane, 'attempts', 0, 'acceptedAt', @acceptedAt, 'notBefore', @notBefore)
        if @expiresAt ~= '' then redis.call('HSET', @status, 'expiresAt', @expiresAt) end
        redis.call('EXPIRE', @status, @ttl)
        redis.call('SET', @body, @payload)
        redis.call('ZADD', @set, @notBefore, @id)
        return 1
        """);

    // Shared by both promotions: an entry whose event is no longer scheduled (cancelled) is dropped; one past its
    // expiresAt is recorded expired. Returns 'move', 'expired' or 'drop'.
    private const string DecideLua = """
        local function decide(statusKey, body, now, ttl)
          if body == false or redis.call('HGET', statusKey, 'state') ~= 'scheduled' then return 'drop' end
          local expiresAt = tonumber(redis.call('HGET', statusKey, 'expiresAt'))
          if expiresAt and expiresAt <= tonumber(now) then
            redis.call('HSET', statusKey, 'state', 'expired', 'expiredAt', now, 'finishedAt', now)
            redis.call('EXPIRE', statusKey, ttl)
            return 'expired'
          end
          return 'move'
        end

        """;

    // ARGV: now, limit, ttl, status prefix, body prefix. Returns { moved, next due or -1, expired ids and types... }.
    private static readonly LuaScript PromoteCpuScript = LuaScript.Prepare(DecideLua + """
        local due = redis.call('ZRANGEBYSCORE', @set, '-inf', @now, 'LIMIT', 0, @limit)
        local moved = 0
        local expired = {}
        for _, id in ipairs(due) do
          local statusKey = @statusPrefix .. id
          local bodyKey = @bodyPrefix .. id
          local body = redis.call('GET', bodyKey)
          local decision = decide(statusKey, body, @now, @ttl)
          redis.call('ZREM', @set, id)
          redis.call('DEL', bodyKey)
          if decision == 'move' then
            local fields = cjson.decode(body)
            fields['acceptedAt'] = @now
            local args = {}
            for name, value in pairs(fields) do
              table.insert(args, name)
              table.insert(args, tostring(value))
            end
            redis.call('XADD', @stream, '*', unpack(args))
            redis.call('HSET', statusKey, 'state', 'accepted')
            redis.call('EXPIRE', statusKey, @ttl)
            moved = moved + 1
          elseif decision == 'expired' then
            table.insert(expired, redis.call('HGET', statusKey, 'type') or '')
          end
        end
        local next = redis.call('ZRANGE', @set, 0, 0, 'WITHSCORES')
        local reply = { moved, next[2] or '-1' }
        for _, t in ipairs(expired) do table.insert(reply, t) end
        return reply
        """);

    // Claims due entries for one lease. Returns { next due or -1, expired types joined by newlines, then id, body pairs of the claimed }.
    private static readonly LuaScript ClaimIoScript = LuaScript.Prepare(DecideLua + """
        local due = redis.call('ZRANGEBYSCORE', @set, '-inf', @now, 'LIMIT', 0, @limit)
        local claimed = {}
        local expired = {}
        for _, id in ipairs(due) do
          local statusKey = @statusPrefix .. id
          local bodyKey = @bodyPrefix .. id
          local body = redis.call('GET', bodyKey)
          local decision = decide(statusKey, body, @now, @ttl)
          if decision == 'move' then
            redis.call('ZADD', @set, @leaseUntil, id)
            table.insert(claimed, id)
            table.insert(claimed, body)
          else
            if decision == 'expired' then table.insert(expired, redis.call('HGET', statusKey, 'type') or '') end
            redis.call('ZREM', @set, id)
            redis.call('DEL', bodyKey)
          end
        end
        local next = redis.call('ZRANGE', @set, 0, 0, 'WITHSCORES')
        local reply = { next[2] or '-1', table.concat(expired, '\n') }
        for _, v in ipairs(claimed) do table.insert(reply, v) end
        return reply
        """);

    // After the confirmed publish: the entry goes only while this claim's lease holds it; the status moves on only
    // from scheduled (a worker that already took the copy up, or a cancel, wins).
    private static readonly LuaScript FinishIoScript = LuaScript.Prepare("""
        local score = redis.call('ZSCORE', @set, @id)
        if score and tonumber(score) == tonumber(@leaseUntil) then
          redis.call('ZREM', @set, @id)
          redis.call('DEL', @body)
        end
        if redis.call('HGET', @status, 'state') == 'scheduled' then
          redis.call('HSET', @status, 'state', 'accepted')
          redis.call('EXPIRE', @status, @ttl)
        end
        return 1
        """);

    private readonly Dictionary<string, SemaphoreSlim> _held = Lanes.All.ToDictionary(lane => lane, _ => new SemaphoreSlim(0));

    private IDatabase Db => redis.GetDatabase();

    private static long Now => DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();

    /// <summary>Holds the events in one transaction: all are scheduled, or none.</summary>
    /// <exception cref="RedisException">nothing or everything may be held (the answer did not come).</exception>
    public async Task HoldAsync(IReadOnlyList<DelayedEvent> events, DateTimeOffset acceptedAt, CancellationToken cancellationToken)
    {
        var now = DateTimeOffset.UtcNow;
        var transaction = Db.CreateTransaction();
        var writes = events.Select(e => transaction.ScriptEvaluateAsync(HoldScript, new
        {
            status = EventStatusStore.Key(e.Id),
            set = SetOf(e.Lane),
            body = BodyKey(e.Id),
            id = e.Id,
            type = e.Type,
            lane = e.Lane,
            acceptedAt = acceptedAt.ToUnixTimeMilliseconds(),
            notBefore = e.NotBefore.ToUnixTimeMilliseconds(),
            expiresAt = e.ExpiresAt?.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "",
            payload = e.Body,
            // Kept until it is due, then as long as any status.
            ttl = statuses.TtlSeconds + (long)Math.Max(0, (e.NotBefore - now).TotalSeconds) + 1,
        })).ToList();
        if (!await transaction.ExecuteAsync().WaitAsync(cancellationToken))
        {
            throw new RedisException("the transaction was not committed");
        }

        await Task.WhenAll(writes);
        foreach (var lane in events.Select(e => e.Lane).Distinct())
        {
            _held[lane].Release(); // this process's promoter: the new event may be due before whatever it sleeps for
        }
    }

    /// <summary>Moves due CPU-lane events into the stream.</summary>
    /// <returns>how many moved, the next due time, and the types of events that expired while they waited.</returns>
    public async Task<(int Moved, DateTimeOffset? NextDue, IReadOnlyList<string> ExpiredTypes)> PromoteCpuAsync()
    {
        var reply = (RedisResult[])(await Db.ScriptEvaluateAsync(PromoteCpuScript, new
        {
            set = SetOf(Lanes.Cpu), stream = CpuLaneStreams.Stream, now = Now, limit = options.Value.PromoteBatch,
            ttl = statuses.TtlSeconds, statusPrefix = "event:", bodyPrefix = BodyPrefix,
        }))!;
        return ((int)reply[0], Due(reply[1]), [.. reply.Skip(2).Select(r => r.ToString()!)]);
    }

    /// <summary>Claims due I/O-lane events for <see cref="SchedulingOptions.IoClaimLease"/>.</summary>
    public async Task<(IReadOnlyList<ClaimedEvent> Claimed, IReadOnlyList<string> ExpiredTypes, DateTimeOffset? NextDue)> ClaimIoAsync()
    {
        var now = Now;
        var leaseUntil = now + (long)options.Value.IoClaimLease.TotalMilliseconds;
        var reply = (RedisResult[])(await Db.ScriptEvaluateAsync(ClaimIoScript, new
        {
            set = SetOf(Lanes.Io), now, leaseUntil, limit = options.Value.PromoteBatch,
            ttl = statuses.TtlSeconds, statusPrefix = "event:", bodyPrefix = BodyPrefix,
        }))!;
        var claimed = new List<ClaimedEvent>();
        for (var i = 2; i + 1 < reply.Length; i += 2)
        {
            claimed.Add(new ClaimedEvent(reply[i].ToString()!, reply[i + 1].ToString()!, leaseUntil));
        }

        var expired = reply[1].ToString() is { Length: > 0 } types ? types.Split('\n') : [];
        return (claimed, expired, Due(reply[0]));
    }

    /// <summary>The claimed events are confirmed in the I/O lane: drop their entries (only under this claim's lease).</summary>
    public async Task FinishIoAsync(IReadOnlyList<ClaimedEvent> published)
    {
        var batch = Db.CreateBatch();
        var writes = published.Select(e => batch.ScriptEvaluateAsync(FinishIoScript, new
        {
            set = SetOf(Lanes.Io), status = EventStatusStore.Key(e.Id), body = BodyKey(e.Id), id = e.Id,
            leaseUntil = e.LeaseUntilMs, ttl = statuses.TtlSeconds,
        })).ToList();
        batch.Execute();
        await Task.WhenAll(writes);
    }

    /// <summary>How many events each lane holds for later (cancelled ones are removed at once).</summary>
    public async Task<IReadOnlyDictionary<string, long>> CountAsync()
    {
        var counts = await Task.WhenAll(Lanes.All.Select(lane => Db.SortedSetLengthAsync(SetOf(lane))));
        return Lanes.All.Zip(counts).ToDictionary(p => p.First, p => p.Second);
    }

    /// <summary>Waits for <paramref name="delay"/> or until this process holds a new event, whichever comes first.</summary>
    public async Task WaitForDueOrHeldAsync(string lane, TimeSpan delay, CancellationToken cancellationToken)
    {
        var held = _held[lane];
        await held.WaitAsync(delay, cancellationToken);
        while (held.CurrentCount > 0 && held.Wait(0))
        {
            // several holds meanwhile: one pass handles them all
        }
    }

    private static DateTimeOffset? Due(RedisResult value)
    {
        var due = double.Parse(value.ToString()!, System.Globalization.CultureInfo.InvariantCulture);
        return due < 0 ? null : DateTimeOffset.FromUnixTimeMilliseconds((long)due);
    }
}

/// <summary>
/// Counts of events that were never run because they expired or were cancelled
/// (<c>eventpipeline_events_not_run_total{lane,reason}</c>), and the scheduled backlog per lane
/// (<c>eventpipeline_lane_scheduled</c>). A static meter on the pipeline's meter name: every service exports it
/// without registering anything.
/// </summary>
public static class SchedulingTelemetry
{
    private static readonly Meter Meter = new("EventPipeline");
    private static readonly Counter<long> NotRunCounter = Meter.CreateCounter<long>("eventpipeline.events.not_run", "{event}",
        "Events never run: expired (not started by expiresAt) or cancelled.");
    private static Func<IReadOnlyDictionary<string, long>?> _scheduled = () => null;

    static SchedulingTelemetry()
    {
        Meter.CreateObservableGauge("eventpipeline.lane.scheduled", () =>
            from pair in _scheduled() ?? new Dictionary<string, long>()
            select new Measurement<long>(pair.Value, new KeyValuePair<string, object?>("lane", pair.Key)),
            "{event}", "Events held for a later start (notBefore), not yet in their lane.");
    }

    public static void NotRun(string lane, string type, string reason) =>
        NotRunCounter.Add(1, new("lane", lane), new("type", type), new("reason", reason));

    /// <summary>Registers the source of the scheduled gauge (only the API does, so each lane is reported once).</summary>
    public static void ObserveScheduled(Func<IReadOnlyDictionary<string, long>?> counts) => _scheduled = counts;
}
