using System.Globalization;
using EventPipeline.Contracts;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.DeadLetters;

/// <summary>
/// The CPU lane's dead letters: the Redis stream <c>events.cpu.dead</c> that Worker.Cpu writes (one entry per dead
/// event with its error, stack and error history). One rule makes every change safe without trusting the lane's lock
/// (which can expire mid-operation): a change acts on a dead letter only if it removed it itself. A replay is one script
/// per entry — XDEL the dead entry; only if that removed it, add the event to <c>events.cpu</c> as attempt 1 carrying its
/// error history and mark its status accepted — so a dead letter is either still dead or back in the lane exactly once,
/// never both, never twice, and never brought back after a delete. An entry whose event has already succeeded (a
/// duplicate) is dropped instead of replayed. Dead letters older than <see cref="StatusOptions.DeadLetterRetention"/>
/// are trimmed before every operation.
/// </summary>
public sealed class CpuDeadLetters(IConnectionMultiplexer redis, EventStatusStore statuses, DeadLetterLock locks, IOptions<DeadLetterOptions> options)
    : IDeadLetterLane
{
    private const int ScanChunk = 200;

    // KEYS: dead-letter stream, lane stream, status hash. ARGV: dead entry id, id, type, lane, acceptedAt, now, ttl, then
    // the lane entry's field/value pairs. 1 replayed, 2 dropped (already succeeded), 0 gone (deleted or replayed by another).
    private const string ReplayScript = EventStatusStore.RecordReplayLua + """
        if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
        if record_replay(KEYS[3], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]) == 0 then return 2 end
        redis.call('XADD', KEYS[2], '*', unpack(ARGV, 8))
        return 1
        """;

    // KEYS: dead-letter stream. ARGV: retention (ms). Cut by the server's clock, which also stamped the entry ids.
    private const string TrimScript = """
        local time = redis.call('TIME')
        local cutoff = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) - tonumber(ARGV[1])
        return redis.call('XTRIM', KEYS[1], 'MINID', math.max(cutoff, 0))
        """;

    public string Lane => Lanes.Cpu;

    private IDatabase Db => redis.GetDatabase();

    /// <summary>A cursor is a stream entry id (<c>ms-seq</c>), as <see cref="ListAsync"/> hands it out.</summary>
    public bool IsCursor(string after)
    {
        var parts = after.Split('-');
        return parts.Length == 2 && parts.All(p => p.Length is > 0 and <= 20 && p.All(char.IsAsciiDigit))
            && ulong.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out _)
            && ulong.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out _);
    }

    public Task<long> CountAsync(CancellationToken cancellationToken) => Guard(async () =>
    {
        await TrimAsync();
        return await Db.StreamLengthAsync(CpuLaneStreams.DeadLetters);
    });

    public Task<DeadLetterPage> ListAsync(string? after, int limit, CancellationToken cancellationToken) => Guard(async () =>
    {
        await TrimAsync();
        // The cursor is the stream entry id of the last item: stable while entries come and go.
        var from = after is null ? "-" : "(" + after;
        var entries = await Db.StreamRangeAsync(CpuLaneStreams.DeadLetters, from, "+", limit + 1);
        var total = await Db.StreamLengthAsync(CpuLaneStreams.DeadLetters);
        var page = entries.Take(limit).Select(e => Parse(e).Summary()).ToList();
        return new DeadLetterPage(Lane, total, page, entries.Length > limit ? entries[limit - 1].Id.ToString() : null);
    });

    public Task<DeadLetter?> GetAsync(string id, CancellationToken cancellationToken) => Guard(async () =>
    {
        await TrimAsync();
        return await FindAsync(id) is { } entry ? Parse(entry) : null;
    });

    public Task<ReplayOutcome> ReplayAsync(string id, CancellationToken cancellationToken) => Guard(async () =>
    {
        await using var held = await locks.AcquireAsync(Lane);
        await TrimAsync();
        return await FindAsync(id) is { } entry ? await ReplayEntryAsync(entry) : ReplayOutcome.NotFound;
    });

    public Task<ReplayAllResult> ReplayAllAsync(int max, CancellationToken cancellationToken) => Guard(async () =>
    {
        await using var held = await locks.AcquireAsync(Lane);
        await TrimAsync();
        // Bounded by the newest dead letter when the call began: an event that dies again at once is appended after it
        // and waits for the next call, instead of being replayed over and over in this one.
        var newest = await Db.StreamRangeAsync(CpuLaneStreams.DeadLetters, "-", "+", 1, Order.Descending);
        if (newest.Length == 0)
        {
            return new ReplayAllResult(0, 0, 0);
        }

        var last = newest[0].Id;
        var replayed = 0;
        var dropped = 0;
        RedisValue from = "-";
        while (replayed < max && !cancellationToken.IsCancellationRequested)
        {
            var chunk = await Db.StreamRangeAsync(CpuLaneStreams.DeadLetters, from, last, Math.Min(ScanChunk, max - replayed));
            if (chunk.Length == 0)
            {
                break;
            }

            // Pipelined, each entry atomic on its own: an entry deleted meanwhile is skipped, not brought back.
            var outcomes = await Task.WhenAll(chunk.Select(ReplayEntryAsync));
            replayed += outcomes.Count(o => o == ReplayOutcome.Replayed);
            dropped += outcomes.Count(o => o == ReplayOutcome.AlreadySucceeded);
            from = "(" + chunk[^1].Id;
        }

        return new ReplayAllResult(replayed, dropped, await Db.StreamLengthAsync(CpuLaneStreams.DeadLetters));
    });

    public Task<bool> DeleteAsync(string id, CancellationToken cancellationToken) => Guard(async () =>
    {
        await using var held = await locks.AcquireAsync(Lane);
        await TrimAsync();
        // XDEL answers 1 only to the caller that removed the entry: a replay racing this delete cannot both win.
        return await FindAsync(id) is { } entry && await Db.StreamDeleteAsync(CpuLaneStreams.DeadLetters, [entry.Id]) == 1;
    });

    public Task<DeleteAllResult> DeleteAllAsync(int max, CancellationToken cancellationToken) => Guard(async () =>
    {
        await using var held = await locks.AcquireAsync(Lane);
        await TrimAsync();
        // Bounded by the newest dead letter when the call began, as replay-all is: what dies meanwhile is kept for a look.
        var newest = await Db.StreamRangeAsync(CpuLaneStreams.DeadLetters, "-", "+", 1, Order.Descending);
        if (newest.Length == 0)
        {
            return new DeleteAllResult(0, 0);
        }

        var last = newest[0].Id;
        var deleted = 0;
        RedisValue from = "-";
        while (deleted < max && !cancellationToken.IsCancellationRequested)
        {
            var chunk = await Db.StreamRangeAsync(CpuLaneStreams.DeadLetters, from, last, Math.Min(ScanChunk, max - deleted));
            if (chunk.Length == 0)
            {
                break;
            }

            // XDEL counts only the entries it removed itself: one a racing replay took first is neither lost nor counted.
            deleted += (int)await Db.StreamDeleteAsync(CpuLaneStreams.DeadLetters, [.. chunk.Select(e => e.Id)]);
            from = "(" + chunk[^1].Id;
        }

        return new DeleteAllResult(deleted, await Db.StreamLengthAsync(CpuLaneStreams.DeadLetters));
    });

    private async Task<ReplayOutcome> ReplayEntryAsync(StreamEntry entry)
    {
        var f = Fields(entry);
        var acceptedAt = long.TryParse(f.GetValueOrDefault(CpuLaneStreams.Fields.AcceptedAt), out var ms)
            ? DateTimeOffset.FromUnixTimeMilliseconds(ms)
            : DateTimeOffset.UtcNow;
        var id = f.GetValueOrDefault(CpuLaneStreams.Fields.Id, "");
        var type = f.GetValueOrDefault(CpuLaneStreams.Fields.Type, "");
        NameValueEntry[] fresh =
        [
            .. CpuLaneStreams.NewEntry(id, type, f.GetValueOrDefault(CpuLaneStreams.Fields.Payload, "{}"), acceptedAt,
                LaneTraceContext.Of(f)),
            // The worker carries this array through retries and appends to it: the history survives the replay.
            new(ErrorsField, f.GetValueOrDefault(ErrorsField, "[]")),
        ];
        RedisValue[] arguments =
        [
            entry.Id, id, type, Lane, acceptedAt.ToUnixTimeMilliseconds(), DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(), statuses.TtlSeconds,
            .. fresh.SelectMany(v => new[] { (RedisValue)v.Name, v.Value }),
        ];
        var result = (int)await Db.ScriptEvaluateAsync(ReplayScript,
            [CpuLaneStreams.DeadLetters, CpuLaneStreams.Stream, EventStatusStore.Key(id)], arguments);
        return result switch
        {
            1 => ReplayOutcome.Replayed,
            2 => ReplayOutcome.AlreadySucceeded,
            _ => ReplayOutcome.NotFound,
        };
    }

    private Task TrimAsync() =>
        Db.ScriptEvaluateAsync(TrimScript, [CpuLaneStreams.DeadLetters], [(long)statuses.DeadLetterRetention.TotalMilliseconds]);

    /// <summary>Scans the dead-letter stream for the newest entry of an event id (the stream is not indexed by id).</summary>
    private async Task<StreamEntry?> FindAsync(string id)
    {
        StreamEntry? found = null;
        RedisValue from = "-";
        for (var scanned = 0; scanned < options.Value.MaxScan;)
        {
            var chunk = await Db.StreamRangeAsync(CpuLaneStreams.DeadLetters, from, "+", ScanChunk);
            foreach (var entry in chunk)
            {
                if (entry.Values.Any(v => v.Name == CpuLaneStreams.Fields.Id && v.Value == id))
                {
                    found = entry;
                }
            }

            scanned += chunk.Length;
            if (chunk.Length < ScanChunk)
            {
                break;
            }

            from = "(" + chunk[^1].Id;
        }

        return found;
    }

    private const string ErrorsField = "errors";

    private DeadLetter Parse(StreamEntry entry)
    {
        var f = Fields(entry);
        return new DeadLetter(
            Id: f.GetValueOrDefault(CpuLaneStreams.Fields.Id, ""),
            Lane: Lane,
            Type: f.GetValueOrDefault(CpuLaneStreams.Fields.Type, ""),
            Payload: PayloadJson.Parse(f.GetValueOrDefault(CpuLaneStreams.Fields.Payload)),
            AcceptedAt: Time(f.GetValueOrDefault(CpuLaneStreams.Fields.AcceptedAt)),
            DeadAt: Time(f.GetValueOrDefault("deadAt")),
            Attempts: int.TryParse(f.GetValueOrDefault("attempts"), CultureInfo.InvariantCulture, out var attempts) ? attempts : null,
            Reason: f.GetValueOrDefault("reason", "failed"),
            Error: new DeadLetterError(f.GetValueOrDefault("errorType"), f.GetValueOrDefault("errorMessage"), Empty(f.GetValueOrDefault("errorStack"))),
            Errors: PayloadJson.ParseHistory(f.GetValueOrDefault(ErrorsField)));
    }

    private static Dictionary<string, string> Fields(StreamEntry entry)
    {
        var fields = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var v in entry.Values)
        {
            fields[v.Name.ToString()] = v.Value.ToString();
        }

        return fields;
    }

    private static DateTimeOffset? Time(string? ms) =>
        long.TryParse(ms, CultureInfo.InvariantCulture, out var value) ? DateTimeOffset.FromUnixTimeMilliseconds(value) : null;

    private static string? Empty(string? value) => string.IsNullOrEmpty(value) ? null : value;

    private async Task<T> Guard<T>(Func<Task<T>> operation)
    {
        try
        {
            return await operation();
        }
        catch (Exception ex) when (RedisFailures.IsOutage(ex))
        {
            throw new DeadLetterStoreUnavailableException(Lane, ex);
        }
    }
}
