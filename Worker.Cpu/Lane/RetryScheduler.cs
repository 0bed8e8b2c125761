using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;
using System.Text.Json;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// Retries without holding a handler: a failed entry is acknowledged and parked in a sorted set scored by its due
/// time (exponential backoff with jitter), atomically. Every consumer periodically moves due entries back into the
/// stream with a script, so retries survive any worker restart and run on whichever consumer reads them.
/// </summary>
public sealed class RetryScheduler(IConnectionMultiplexer redis, EventStatusStore statuses, IOptions<CpuLaneOptions> options)
{
    private readonly SemaphoreSlim _scheduled = new(0);

    // Moves due members into the stream; returns { moved, due time of the next waiting member or -1 }.
    private static readonly LuaScript PromoteDue = LuaScript.Prepare("""
        local due = redis.call('ZRANGEBYSCORE', @delayed, '-inf', @now, 'LIMIT', 0, @limit)
        for _, member in ipairs(due) do
          local fields = cjson.decode(member)
          local args = {}
          for name, value in pairs(fields) do
            table.insert(args, name)
            table.insert(args, value)
          end
          redis.call('XADD', @stream, '*', unpack(args))
          redis.call('ZREM', @delayed, member)
        end
        local next = redis.call('ZRANGE', @delayed, 0, 0, 'WITHSCORES')
        return { #due, next[2] or '-1' }
        """);

    public TimeSpan DelayBefore(int nextAttempt)
    {
        var o = options.Value;
        var exponential = o.RetryBaseDelay.TotalMilliseconds * Math.Pow(2, Math.Max(0, nextAttempt - 2));
        var capped = Math.Min(exponential, o.RetryMaxDelay.TotalMilliseconds);
        // Full jitter on the upper half: spreads a burst of failures without ever retrying immediately.
        return TimeSpan.FromMilliseconds(capped / 2 + Random.Shared.NextDouble() * capped / 2);
    }

    public async Task ScheduleAsync(LaneEntry entry, Exception error)
    {
        var now = DateTimeOffset.UtcNow;
        var history = entry.HistoryWith(error, now);
        var due = now + DelayBefore(entry.Attempt + 1);
        var member = JsonSerializer.Serialize(entry.NextAttemptFields(history));

        var transaction = redis.GetDatabase().CreateTransaction();
        _ = transaction.SortedSetAddAsync(CpuLaneStreams.Delayed, member, due.ToUnixTimeMilliseconds());
        _ = statuses.MarkRetryingAsync(transaction, entry.Id, entry.Attempt, $"{error.GetType().Name}: {error.Message}");
        _ = EntryAcknowledger.AcknowledgeAsync(transaction, entry.EntryId);
        await EntryAcknowledger.CommitAsync(transaction);
        _scheduled.Release(); // wake this process's promoter: its retry may be due before whatever it sleeps for
    }

    /// <returns>how many retries were moved back into the stream, and when the next waiting one is due (null: none).</returns>
    public async Task<(int Moved, DateTimeOffset? NextDue)> PromoteDueAsync(int limit = 500)
    {
        var reply = (RedisResult[])(await redis.GetDatabase().ScriptEvaluateAsync(PromoteDue, new
        {
            delayed = CpuLaneStreams.Delayed,
            stream = CpuLaneStreams.Stream,
            now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(),
            limit,
        }))!;
        var next = double.Parse(reply[1].ToString()!, System.Globalization.CultureInfo.InvariantCulture);
        return ((int)reply[0], next < 0 ? null : DateTimeOffset.FromUnixTimeMilliseconds((long)next));
    }

    /// <summary>Waits for <paramref name="delay"/> or until this process schedules a retry, whichever comes first.</summary>
    public async Task WaitForDueOrScheduledAsync(TimeSpan delay, CancellationToken cancellationToken)
    {
        await _scheduled.WaitAsync(delay, cancellationToken);
        while (_scheduled.CurrentCount > 0 && _scheduled.Wait(0))
        {
            // several retries scheduled meanwhile: one promotion pass handles them all
        }
    }
}
