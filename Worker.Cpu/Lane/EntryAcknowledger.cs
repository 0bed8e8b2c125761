using EventPipeline.Shared;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// Acknowledgements. An entry is acknowledged only together with its recorded outcome, or not at all. Successes are
/// recorded and acknowledged in batches by <see cref="LaneWriter"/>'s script: each status is written, then only the
/// entries whose status now reads <c>succeeded</c> and which this consumer still holds are acknowledged (one XACK, HDEL
/// and XDEL for all). A status write that fails (a wrong-type key, Redis out of memory) leaves its entry pending and
/// does not stop the others: Redis rolls nothing back, so the check reads what was really written. Other outcomes queue their write and the XACK + XDEL in one MULTI/EXEC (<see cref="AcknowledgeAsync(ITransaction, RedisValue)"/>).
/// Deleting acknowledged entries keeps the stream equal to the lane's unfinished work (its length is the depth).
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
