using EventPipeline.Shared;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// Finishes an entry after its handler ran: the status/result write, XACK and XDEL happen in one MULTI/EXEC, so the
/// entry is acknowledged exactly when its outcome is recorded. Deleting acknowledged entries keeps the stream equal to
/// the lane's unfinished work (its length is the depth).
/// </summary>
public sealed class EntryAcknowledger(IConnectionMultiplexer redis, EventStatusStore statuses)
{
    /// <returns>true when this run recorded the success; false when the event had already succeeded (redelivery).</returns>
    public async Task<bool> SucceededAsync(LaneEntry entry, string result)
    {
        var transaction = redis.GetDatabase().CreateTransaction();
        var recorded = statuses.MarkSucceededAsync(transaction, entry.Id, entry.Attempt, result);
        _ = AcknowledgeAsync(transaction, entry.EntryId);
        await CommitAsync(transaction);
        return await recorded;
    }

    /// <summary>Acknowledges an entry whose event had already succeeded: nothing to record, nothing to run.</summary>
    public Task AcknowledgeAsync(LaneEntry entry)
    {
        var transaction = redis.GetDatabase().CreateTransaction();
        _ = AcknowledgeAsync(transaction, entry.EntryId);
        return CommitAsync(transaction);
    }

    /// <summary>
    /// Records that a handler is about to run the entry, before any work: if this process dies now, whoever claims the
    /// entry knows it was running (a suspect), not an innocent entry that was only buffered.
    /// </summary>
    public Task MarkStartedAsync(LaneEntry entry) =>
        redis.GetDatabase().HashIncrementAsync(CpuLaneStreams.Started, entry.EntryId);

    internal static Task AcknowledgeAsync(ITransaction transaction, RedisValue entryId)
    {
        _ = transaction.StreamAcknowledgeAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, entryId);
        _ = transaction.HashDeleteAsync(CpuLaneStreams.Started, entryId);
        return transaction.StreamDeleteAsync(CpuLaneStreams.Stream, [entryId]);
    }

    internal static async Task CommitAsync(ITransaction transaction)
    {
        if (!await transaction.ExecuteAsync())
        {
            throw new RedisException("MULTI/EXEC was not committed");
        }
    }
}
