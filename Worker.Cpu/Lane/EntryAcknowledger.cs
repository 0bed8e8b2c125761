using EventPipeline.Shared;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// Start marks and acknowledgements of single entries. Whoever finishes an entry queues its outcome write with XACK and
/// XDEL in one MULTI/EXEC (<see cref="AcknowledgeAsync(ITransaction, RedisValue)"/>), so the entry is acknowledged
/// exactly when its outcome is recorded; successes go in batches through <see cref="SuccessBatcher"/>. Deleting
/// acknowledged entries keeps the stream equal to the lane's unfinished work (its length is the depth).
/// </summary>
public sealed class EntryAcknowledger(IConnectionMultiplexer redis)
{
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
