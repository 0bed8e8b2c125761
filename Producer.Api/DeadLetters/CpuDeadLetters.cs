using System.Globalization;
using EventPipeline.Contracts;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.DeadLetters;

/// <summary>
/// The CPU lane's dead letters: the Redis stream <c>events.cpu.dead</c> that Worker.Cpu writes (one entry per dead
/// event with its error, stack and error history). A replay is one MULTI/EXEC — delete the dead entry, add the event
/// to <c>events.cpu</c> as attempt 1 carrying its error history, and mark its status accepted — so it is either still
/// dead or back in the lane, never both or neither.
/// </summary>
public sealed class CpuDeadLetters(IConnectionMultiplexer redis, EventStatusStore statuses, DeadLetterLock locks, IOptions<DeadLetterOptions> options)
    : IDeadLetterLane
{
    private const int ScanChunk = 200;

    public string Lane => Lanes.Cpu;

    private IDatabase Db => redis.GetDatabase();

    public Task<long> CountAsync(CancellationToken cancellationToken) => Guard(() => Db.StreamLengthAsync(CpuLaneStreams.DeadLetters));

    public Task<DeadLetterPage> ListAsync(string? after, int limit, CancellationToken cancellationToken) => Guard(async () =>
    {
        // The cursor is the stream entry id of the last item: stable while entries come and go.
        var from = after is null ? "-" : "(" + after;
        var entries = await Db.StreamRangeAsync(CpuLaneStreams.DeadLetters, from, "+", limit + 1);
        var total = await Db.StreamLengthAsync(CpuLaneStreams.DeadLetters);
        var page = entries.Take(limit).Select(e => Parse(e).Summary()).ToList();
        return new DeadLetterPage(Lane, total, page, entries.Length > limit ? entries[limit - 1].Id.ToString() : null);
    });

    public Task<DeadLetter?> GetAsync(string id, CancellationToken cancellationToken) =>
        Guard(async () => await FindAsync(id) is { } entry ? Parse(entry) : null);

    public Task<bool> ReplayAsync(string id, CancellationToken cancellationToken) => Guard(async () =>
    {
        await using var held = await locks.AcquireAsync(Lane);
        if (await FindAsync(id) is not { } entry)
        {
            return false;
        }

        await ReplayEntriesAsync([entry]);
        return true;
    });

    public Task<int> ReplayAllAsync(int max, CancellationToken cancellationToken) => Guard(async () =>
    {
        await using var held = await locks.AcquireAsync(Lane);
        var replayed = 0;
        while (replayed < max && !cancellationToken.IsCancellationRequested)
        {
            var chunk = await Db.StreamRangeAsync(CpuLaneStreams.DeadLetters, "-", "+", Math.Min(ScanChunk, max - replayed));
            if (chunk.Length == 0)
            {
                break;
            }

            await ReplayEntriesAsync(chunk);
            replayed += chunk.Length;
        }

        return replayed;
    });

    public Task<bool> DeleteAsync(string id, CancellationToken cancellationToken) => Guard(async () =>
    {
        await using var held = await locks.AcquireAsync(Lane);
        return await FindAsync(id) is { } entry && await Db.StreamDeleteAsync(CpuLaneStreams.DeadLetters, [entry.Id]) == 1;
    });

    private async Task ReplayEntriesAsync(IReadOnlyList<StreamEntry> entries)
    {
        var transaction = Db.CreateTransaction();
        foreach (var entry in entries)
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
                    f.GetValueOrDefault(CpuLaneStreams.Fields.TraceParent)),
                // The worker carries this array through retries and appends to it: the history survives the replay.
                new(ErrorsField, f.GetValueOrDefault(ErrorsField, "[]")),
            ];
            _ = transaction.StreamDeleteAsync(CpuLaneStreams.DeadLetters, [entry.Id]);
            _ = transaction.StreamAddAsync(CpuLaneStreams.Stream, fresh);
            _ = statuses.MarkReplayedAsync(transaction, id, type, Lane, acceptedAt);
        }

        if (!await transaction.ExecuteAsync())
        {
            throw new RedisException("the replay transaction was not committed");
        }
    }

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
        catch (Exception ex) when (ex is RedisException or TimeoutException)
        {
            throw new DeadLetterStoreUnavailableException(Lane, ex);
        }
    }
}
