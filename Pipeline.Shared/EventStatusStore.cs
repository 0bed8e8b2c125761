using EventPipeline.Contracts;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Shared;

public sealed class StatusOptions
{
    /// <summary>How long an event's status (and CPU result) is kept after its last change.</summary>
    public TimeSpan Retention { get; set; } = TimeSpan.FromHours(24);

    /// <summary>
    /// How long a dead letter is kept in either lane's dead-letter store before it is dropped. A dead event's status is
    /// kept this long plus <see cref="Retention"/>, so it can be read for as long as its dead letter can.
    /// </summary>
    public TimeSpan DeadLetterRetention { get; set; } = TimeSpan.FromDays(14);

    internal long DeadTtlSeconds => (long)(DeadLetterRetention + Retention).TotalSeconds;
}

/// <summary>
/// The status of every event, one Redis hash per event id (<c>event:{id}</c>), shared by the API and both lanes.
/// Writes are scripts so that a late or repeated writer cannot move an event backwards: nothing overwrites
/// <c>succeeded</c> (a replay included), and <c>accepted</c> is only written to an event that has no state yet or that
/// an operator replays. A dead event's status is kept as long as its dead letter (<see cref="StatusOptions.DeadLetterRetention"/>).
/// </summary>
public sealed class EventStatusStore(IConnectionMultiplexer redis, IOptions<StatusOptions> options)
{
    public static RedisKey Key(string eventId) => $"event:{eventId}";

    /// <summary>
    /// Lua function <c>record_accepted(key, id, type, lane, acceptedAt, ttl, onlyNew)</c>: the <c>accepted</c> status of a
    /// new event; true when this call created the state. With <c>onlyNew</c> it writes nothing to an event that already
    /// has a state (the CPU lane's publish then adds no second entry). The expiry is set only with the state: the I/O lane writes accepted after the publish, when a fast worker
    /// may already have written (and timed) a later state, e.g. dead, which is kept as long as its dead letter. Shared
    /// with the CPU lane's publish script, which writes it and the stream entry in one step.
    /// </summary>
    public const string RecordAcceptedLua = """
        local function record_accepted(key, id, type, lane, acceptedAt, ttl, onlyNew)
          -- One read and one write (and EXPIRE for a new state): every accepted event pays this, in the API's ingest.
          local fields = redis.call('HMGET', key, 'state', 'acceptedAt')
          local created = not fields[1]
          if created then
            redis.call('HSET', key, 'state', 'accepted', 'attempts', 0, 'id', id, 'type', type, 'lane', lane,
              'acceptedAt', fields[2] or acceptedAt)
            redis.call('EXPIRE', key, ttl)
          elseif onlyNew then
            return false
          elseif fields[2] then
            redis.call('HSET', key, 'id', id, 'type', type, 'lane', lane)
          else
            redis.call('HSET', key, 'id', id, 'type', type, 'lane', lane, 'acceptedAt', acceptedAt)
          end
          return created
        end

        """;

    private static readonly LuaScript AcceptScript = LuaScript.Prepare(
        RecordAcceptedLua + "record_accepted(@key, @id, @type, @lane, @acceptedAt, @ttl, false) return 1");

    /// <summary>
    /// Lua function <c>try_start(key, attempt, now, ttl, copy)</c>, the one check-and-move every start goes through (both
    /// lanes; Worker.Cpu runs it in the same script as its run charge): a cancelled or expired event never starts, and
    /// one not started by its expiresAt is recorded expired here. A redelivery of an event that had started is not
    /// expired. Returns a <see cref="StartDecision"/>.
    /// </summary>
    public const string TryStartLua = """
        local function try_start(key, attempt, now, ttl, copy)
          -- startedAt and the running copy are read with the state and written with it: every event starts once per
          -- attempt, so each command here is paid per event in both lanes (docs/cpu-lane.md, "Redis commands per event").
          local fields = redis.call('HMGET', key, 'state', 'expiresAt', 'startedAt', 'copy')
          local state, started, running = fields[1], fields[3], fields[4]
          if state == 'succeeded' then return 0 end
          if state == 'cancelled' then return 2 end
          if state == 'expired' then return 3 end
          local expiresAt = tonumber(fields[2])
          if expiresAt and expiresAt <= tonumber(now) and not started then
            redis.call('HSET', key, 'state', 'expired', 'expiredAt', now, 'finishedAt', now)
            redis.call('EXPIRE', key, ttl)
            return 3
          end
          if copy ~= '' and state == 'processing' and running and running ~= copy then return 4 end
          -- The first start's time stays: a redelivery does not move it. The copy is written only by the lane that has
          -- copies (the I/O lane); the CPU lane passes ''.
          if started then
            if copy ~= '' then
              redis.call('HSET', key, 'state', 'processing', 'attempts', attempt, 'copy', copy)
            else
              redis.call('HSET', key, 'state', 'processing', 'attempts', attempt)
            end
          elseif copy ~= '' then
            redis.call('HSET', key, 'state', 'processing', 'attempts', attempt, 'startedAt', now, 'copy', copy)
          else
            redis.call('HSET', key, 'state', 'processing', 'attempts', attempt, 'startedAt', now)
          end
          redis.call('EXPIRE', key, ttl)
          return 1
        end

        """;

    private static readonly LuaScript ProcessingScript = LuaScript.Prepare(
        TryStartLua + "return try_start(@key, @attempt, @now, @ttl, @copy)");

    // A failed attempt never reopens a final state. Only a copy that ran while something else decided the event's fate
    // writes retrying over one (a worker paused past the broker's heartbeat while another delivery of its message failed
    // and was cancelled, or was dead-lettered): cancelled, expired and dead stay, so that copy's next start is refused
    // (cancelled, expired) or is at worst the start a replay would give (dead), and a cancel is never undone.
    private static readonly LuaScript RetryingScript = LuaScript.Prepare("""
        local state = redis.call('HGET', @key, 'state')
        if state == 'succeeded' or state == 'cancelled' or state == 'expired' or state == 'dead' then return 0 end
        redis.call('HSET', @key, 'state', 'retrying', 'attempts', @attempt, 'error', @error)
        redis.call('EXPIRE', @key, @ttl)
        return 1
        """);

    /// <summary>
    /// Lua function <c>record_succeeded(key, attempt, now, result, ttl)</c>: 1 when this call recorded the success, 0 when
    /// the event had already succeeded (a redelivery: <c>completions</c> counts each success once). Shared with
    /// Worker.Cpu's script that records a batch of successes and acknowledges their entries in one step.
    /// </summary>
    public const string RecordSucceededLua = """
        local function record_succeeded(key, attempt, now, result, ttl)
          -- One read and one write (then EXPIRE; HDEL only after a failed attempt left an error): paid per event.
          local fields = redis.call('HMGET', key, 'state', 'error', 'completions')
          if fields[1] == 'succeeded' then return 0 end
          redis.call('HSET', key, 'state', 'succeeded', 'attempts', attempt, 'finishedAt', now, 'result', result,
            'completions', (tonumber(fields[3]) or 0) + 1)
          if fields[2] then redis.call('HDEL', key, 'error') end
          redis.call('EXPIRE', key, ttl)
          return 1
        end

        """;

    private static readonly LuaScript SucceededScript = LuaScript.Prepare(
        RecordSucceededLua + "return record_succeeded(@key, @attempt, @now, @result, @ttl)");

    /// <summary>
    /// Lua function <c>record_dead(key, attempt, now, error, ttl)</c>: 1 when it marked the event dead, 0 when the event
    /// had already succeeded (a duplicate run). Shared with the scripts that write a dead letter in the same step, so the
    /// dead letter exists exactly when the status says <c>dead</c>.
    /// </summary>
    public const string RecordDeadLua = """
        local function record_dead(key, attempt, now, error, ttl)
          if redis.call('HGET', key, 'state') == 'succeeded' then return 0 end
          redis.call('HSET', key, 'state', 'dead', 'attempts', attempt, 'finishedAt', now, 'error', error)
          redis.call('EXPIRE', key, ttl)
          return 1
        end

        """;

    /// <summary>
    /// Lua function <c>record_replay(key, id, type, lane, acceptedAt, now, ttl)</c>: a dead letter sent back to its lane is
    /// accepted again with fresh attempts (the last error stays as history). 0, and nothing written, when the event has
    /// already succeeded: a replay never turns <c>succeeded</c> back into <c>accepted</c>.
    /// </summary>
    public const string RecordReplayLua = """
        local function record_replay(key, id, type, lane, acceptedAt, now, ttl)
          if redis.call('HGET', key, 'state') == 'succeeded' then return 0 end
          redis.call('HSET', key, 'id', id, 'type', type, 'lane', lane, 'state', 'accepted', 'attempts', 0, 'replayedAt', now)
          redis.call('HSETNX', key, 'acceptedAt', acceptedAt)
          redis.call('HDEL', key, 'startedAt', 'finishedAt')
          redis.call('HINCRBY', key, 'replays', 1)
          redis.call('EXPIRE', key, ttl)
          return 1
        end

        """;

    private static readonly LuaScript DeadScript = LuaScript.Prepare(
        RecordDeadLua + "return record_dead(@key, @attempt, @now, @error, @ttl)");

    // The replay is always counted (replays, replayedAt: it happened); the state goes back to accepted with fresh
    // attempts only if nothing moved it since the copy was published (the worker's writes win).
    private static readonly LuaScript ReplayIfUnchangedScript = LuaScript.Prepare(RecordReplayLua + """
        local state = redis.call('HGET', @key, 'state') or ''
        local finished = redis.call('HGET', @key, 'finishedAt') or ''
        if state == @seenState and finished == @seenFinishedAt then
          return record_replay(@key, @id, @type, @lane, @acceptedAt, @now, @ttl)
        end
        redis.call('HINCRBY', @key, 'replays', 1)
        redis.call('HSET', @key, 'replayedAt', @now)
        return 0
        """);

    // Cancels an event that has not started, wherever it waits: the scheduled set entry goes with it; one in a lane (or
    // waiting for a retry) is refused by the start check above. Returns { outcome, state before }.
    private static readonly LuaScript CancelScript = LuaScript.Prepare("""
        local state = redis.call('HGET', @key, 'state')
        if not state then return { 'missing', '' } end
        if state == 'cancelled' then return { 'already', state } end
        if state ~= 'accepted' and state ~= 'scheduled' and state ~= 'retrying' then return { 'started', state } end
        redis.call('HSET', @key, 'state', 'cancelled', 'cancelledAt', @now, 'finishedAt', @now)
        redis.call('EXPIRE', @key, @ttl)
        local lane = redis.call('HGET', @key, 'lane') or ''
        redis.call('ZREM', 'events.' .. lane .. '.scheduled', @id)
        redis.call('DEL', @body)
        return { 'cancelled', state }
        """);

    private IDatabase Db => redis.GetDatabase();

    /// <summary>Seconds a status is kept after its last change (<see cref="StatusOptions.Retention"/>).</summary>
    public long TtlSeconds => (long)options.Value.Retention.TotalSeconds;

    /// <summary>Seconds the status of a dead event is kept: its dead letter's retention, then the normal retention.</summary>
    public long DeadTtlSeconds => options.Value.DeadTtlSeconds;

    /// <summary>Dead letters older than this are dropped from both lanes' dead-letter stores.</summary>
    public TimeSpan DeadLetterRetention => options.Value.DeadLetterRetention;

    /// <summary>Unix milliseconds, the time format of every status field.</summary>
    public static long Now => DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();

    /// <summary>Queues the <c>accepted</c> write on a batch or transaction, so it lands with the broker write.</summary>
    public Task MarkAcceptedAsync(IDatabaseAsync db, string id, string type, string lane, DateTimeOffset acceptedAt) =>
        db.ScriptEvaluateAsync(AcceptScript, new
        {
            key = Key(id), id, type, lane, acceptedAt = acceptedAt.ToUnixTimeMilliseconds(), ttl = TtlSeconds,
        });

    public Task MarkAcceptedAsync(string id, string type, string lane, DateTimeOffset acceptedAt) =>
        MarkAcceptedAsync(Db, id, type, lane, acceptedAt);

    /// <returns>false when the event must not run: it already succeeded, was cancelled or expired (see <see cref="TryStartAsync"/>).</returns>
    public async Task<bool> MarkProcessingAsync(string id, int attempt) => await TryStartAsync(id, attempt) == StartDecision.Start;

    /// <summary>
    /// The start check of both lanes: moves the event to <c>processing</c> only if it may run, in one script, so a
    /// cancel either lands before it (the event never runs) or after it (the cancel answers 409).
    /// </summary>
    /// <param name="copy">
    /// the broker's id of this copy of the event (the I/O lane's message id), or "" when the lane cannot hold two copies.
    /// While one copy is <c>processing</c>, another copy (a second publish of the same event id) is refused; the same
    /// copy redelivered after its worker died is not.
    /// </param>
    public async Task<StartDecision> TryStartAsync(string id, int attempt, string copy = "") =>
        (StartDecision)(int)await Db.ScriptEvaluateAsync(ProcessingScript, new { key = Key(id), attempt, now = Now, ttl = TtlSeconds, copy });

    /// <summary>Cancels the event if it has not started (accepted, scheduled or waiting for a retry).</summary>
    public async Task<(CancelOutcome Outcome, string? State)> CancelAsync(string id)
    {
        var reply = (RedisResult[])(await Db.ScriptEvaluateAsync(CancelScript, new
        {
            key = Key(id), id, body = (RedisKey)(DelayedEventStore.BodyPrefix + id), now = Now, ttl = TtlSeconds,
        }))!;
        var outcome = reply[0].ToString() switch
        {
            "cancelled" => CancelOutcome.Cancelled,
            "already" => CancelOutcome.AlreadyCancelled,
            "started" => CancelOutcome.Started,
            _ => CancelOutcome.NotFound,
        };
        return (outcome, reply[1].ToString() is { Length: > 0 } s ? s : null);
    }

    public Task MarkRetryingAsync(IDatabaseAsync db, string id, int attempt, string error) =>
        db.ScriptEvaluateAsync(RetryingScript, new { key = Key(id), attempt, error, ttl = TtlSeconds });

    public Task MarkRetryingAsync(string id, int attempt, string error) => MarkRetryingAsync(Db, id, attempt, error);

    /// <returns>true when this call recorded the success; false when the event had already succeeded.</returns>
    /// <remarks>Safe inside a transaction: the command is queued before the first await.</remarks>
    public async Task<bool> MarkSucceededAsync(IDatabaseAsync db, string id, int attempt, string result) =>
        (int)await db.ScriptEvaluateAsync(SucceededScript, new { key = Key(id), attempt, now = Now, result, ttl = TtlSeconds }) == 1;

    public Task<bool> MarkSucceededAsync(string id, int attempt, string result) => MarkSucceededAsync(Db, id, attempt, result);

    public Task MarkDeadAsync(IDatabaseAsync db, string id, int attempt, string error) =>
        db.ScriptEvaluateAsync(DeadScript, new { key = Key(id), attempt, now = Now, error, ttl = DeadTtlSeconds });

    public Task MarkDeadAsync(string id, int attempt, string error) => MarkDeadAsync(Db, id, attempt, error);

    /// <summary>
    /// Records a dead-letter replay once the copy is back in its lane, only if the status is still the one seen before
    /// the copy was published (<paramref name="seenState"/>, <paramref name="seenFinishedAt"/>): a worker that already
    /// took the copy up (processing, succeeded, even dead again) wins, and an API that dies before this write leaves
    /// the event <c>dead</c> until the worker writes, never <c>accepted</c> with no copy in the lane.
    /// </summary>
    /// <returns>false when the status moved on meanwhile: then only the replay is counted (<c>replays</c>, <c>replayedAt</c>).</returns>
    public async Task<bool> MarkReplayedIfUnchangedAsync(string id, string type, string lane, DateTimeOffset acceptedAt, string? seenState, string? seenFinishedAt) =>
        (int)await Db.ScriptEvaluateAsync(ReplayIfUnchangedScript, new
        {
            key = Key(id), id, type, lane, acceptedAt = acceptedAt.ToUnixTimeMilliseconds(), now = Now, ttl = TtlSeconds,
            seenState = seenState ?? "", seenFinishedAt = seenFinishedAt ?? "",
        }) == 1;

    /// <summary>The state and finish time a replay compares against (<see cref="MarkReplayedIfUnchangedAsync"/>).</summary>
    public async Task<(string? State, string? FinishedAt)> GetReplayViewAsync(string id)
    {
        var fields = await Db.HashGetAsync(Key(id), ["state", "finishedAt"]);
        return (fields[0].IsNull ? null : fields[0].ToString(), fields[1].IsNull ? null : fields[1].ToString());
    }

    public async Task<string?> GetStateAsync(string id) => await Db.HashGetAsync(Key(id), "state");

    public async Task<EventStatus?> GetAsync(string id)
    {
        var entries = await Db.HashGetAllAsync(Key(id));
        if (entries.Length == 0)
        {
            return null;
        }

        var fields = entries.ToDictionary(e => e.Name.ToString(), e => e.Value.ToString());
        return new EventStatus(
            Id: fields.GetValueOrDefault("id", id),
            Type: fields.GetValueOrDefault("type", ""),
            Lane: fields.GetValueOrDefault("lane", ""),
            State: fields.GetValueOrDefault("state", EventStates.Accepted),
            Attempts: int.TryParse(fields.GetValueOrDefault("attempts"), out var attempts) ? attempts : 0,
            Error: fields.GetValueOrDefault("error"),
            Result: fields.GetValueOrDefault("result"),
            AcceptedAt: Time(fields, "acceptedAt"),
            StartedAt: Time(fields, "startedAt"),
            FinishedAt: Time(fields, "finishedAt"),
            Replays: int.TryParse(fields.GetValueOrDefault("replays"), out var replays) ? replays : 0,
            ReplayedAt: Time(fields, "replayedAt"),
            NotBefore: Time(fields, "notBefore"),
            ExpiresAt: Time(fields, "expiresAt"),
            CancelledAt: Time(fields, "cancelledAt"),
            ExpiredAt: Time(fields, "expiredAt"));
    }

    /// <summary>How many times a success was recorded for the event: 1 for every event, or work ran twice.</summary>
    public async Task<long> GetCompletionsAsync(string id) =>
        (long?)await Db.HashGetAsync(Key(id), "completions") ?? 0;

    private static DateTimeOffset? Time(Dictionary<string, string> fields, string name) =>
        long.TryParse(fields.GetValueOrDefault(name), out var ms) ? DateTimeOffset.FromUnixTimeMilliseconds(ms) : null;
}

/// <summary>What the start check decided (<see cref="EventStatusStore.TryStartAsync"/>).</summary>
public enum StartDecision
{
    /// <summary>Already succeeded: acknowledge the redelivery without running it.</summary>
    AlreadySucceeded = 0,
    Start = 1,
    /// <summary>Cancelled before it started: acknowledge without running it.</summary>
    Cancelled = 2,
    /// <summary>Not started by its <c>expiresAt</c> (now recorded <c>expired</c>): acknowledge without running it.</summary>
    Expired = 3,
    /// <summary>Another copy of the same event is running: acknowledge this one without running it.</summary>
    AnotherCopyRunning = 4,
}

public enum CancelOutcome
{
    Cancelled,
    AlreadyCancelled,
    Started,
    NotFound,
}
