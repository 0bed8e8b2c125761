using System.Globalization;
using EventPipeline.Shared;
using StackExchange.Redis;
using F = EventPipeline.Shared.CpuLaneStreams.Fields;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// The end of the line for an event that cannot succeed: XADD to <c>events.cpu.dead</c> with the event, the error
/// (type, message, stack), attempts and times, the <c>dead</c> status, and XACK/XDEL of the lane entry — all in one
/// script, which writes nothing before the dead letter is in and acknowledges only after it (a script that fails half
/// way, e.g. on a full Redis or a key of the wrong type, leaves the entry pending, to be claimed and finished again;
/// inside a MULTI, Redis would have run the XACK regardless). An entry of an event that already succeeded (a duplicate)
/// is acknowledged with no dead letter, so a replay can never run a finished event again. Each XADD trims the stream to
/// <see cref="StatusOptions.DeadLetterRetention"/> (MINID), the age to which dead statuses are kept.
/// </summary>
public sealed class DeadLetterStream(IConnectionMultiplexer redis, EventStatusStore statuses)
{
    // KEYS: status hash, dead-letter stream, lane stream, started-runs hash. ARGV: attempt, now (ms), error, status ttl (s),
    // retention (ms), group, lane entry id, then the dead letter's field/value pairs. The MINID cutoff comes from the
    // server's clock, which also stamps the entry ids. Returns 1 when dead-lettered, 0 when the event had succeeded.
    private const string DeadLetterScript = EventStatusStore.RecordDeadLua + """
        local function acknowledge()
          redis.call('XACK', KEYS[3], ARGV[6], ARGV[7])
          redis.call('HDEL', KEYS[4], ARGV[7])
          redis.call('XDEL', KEYS[3], ARGV[7])
        end
        if redis.call('HGET', KEYS[1], 'state') == 'succeeded' then
          acknowledge()
          return 0
        end
        local time = redis.call('TIME')
        local cutoff = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) - tonumber(ARGV[5])
        redis.call('XADD', KEYS[2], 'MINID', math.max(cutoff, 0), '*', unpack(ARGV, 8))
        record_dead(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
        acknowledge()
        return 1
        """;

    public const string ReasonFailed = "failed";
    public const string ReasonDeliveryLimit = "delivery-limit";

    /// <returns>false when the event had already succeeded: the entry was acknowledged and nothing dead-lettered.</returns>
    public async Task<bool> DeadLetterAsync(LaneEntry entry, string reason, string errorType, string errorMessage, string? stackTrace, string errorHistory)
    {
        var now = DateTimeOffset.UtcNow;
        NameValueEntry[] fields =
        [
            new(F.Id, entry.Id),
            new(F.Type, entry.Type),
            new(F.Payload, entry.Payload),
            new(F.AcceptedAt, entry.AcceptedAt.ToUnixTimeMilliseconds()),
            new("attempts", entry.Attempt),
            new("reason", reason),
            new("errorType", errorType),
            new("errorMessage", errorMessage),
            new("errorStack", stackTrace ?? ""),
            new(LaneEntry.ErrorsField, errorHistory),
            new("deadAt", now.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture)),
            new("sourceEntryId", entry.EntryId),
            .. entry.TraceContext,
        ];

        RedisValue[] arguments =
        [
            entry.Attempt,
            now.ToUnixTimeMilliseconds(),
            $"{errorType}: {errorMessage}",
            statuses.DeadTtlSeconds,
            (long)statuses.DeadLetterRetention.TotalMilliseconds,
            CpuLaneStreams.Group,
            entry.EntryId,
            .. fields.SelectMany(f => new[] { (RedisValue)f.Name, f.Value }),
        ];
        RedisKey[] keys = [EventStatusStore.Key(entry.Id), CpuLaneStreams.DeadLetters, CpuLaneStreams.Stream, CpuLaneStreams.Started];
        return (int)await redis.GetDatabase().ScriptEvaluateAsync(DeadLetterScript, keys, arguments) == 1;
    }

    public Task<bool> DeadLetterAsync(LaneEntry entry, Exception error) =>
        DeadLetterAsync(entry, ReasonFailed, error.GetType().FullName ?? error.GetType().Name, error.Message, error.StackTrace,
            entry.HistoryWith(error, DateTimeOffset.UtcNow));
}
