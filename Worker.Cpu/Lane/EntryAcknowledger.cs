using EventPipeline.Shared;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// Acknowledgements. An entry is acknowledged only together with its recorded outcome, or not at all: whoever
/// finishes an entry queues its outcome write and the XACK + XDEL in one MULTI/EXEC
/// (<see cref="AcknowledgeAsync(ITransaction, RedisValue)"/>), and a success is acknowledged by a script that runs
/// after the status scripts in the same transaction and acknowledges only entries whose status now reads
/// <c>succeeded</c> (<see cref="AcknowledgeSucceededAsync"/>): Redis rolls nothing back when a script fails inside a
/// MULTI, so an unconditional XACK there would drop an entry whose success was never written. Deleting acknowledged
/// entries keeps the stream equal to the lane's unfinished work (its length is the depth).
/// </summary>
public sealed class EntryAcknowledger(IConnectionMultiplexer redis)
{
    // KEYS[1] stream, KEYS[2] started-runs hash, KEYS[2 + i] status hash of entry i; ARGV[1] group, ARGV[2] consumer,
    // ARGV[2 + i] entry id i. Acknowledges (one XACK, HDEL and XDEL for all) the entries whose event reads `succeeded`
    // and which are still pending to this consumer (one another consumer claimed is left to it); returns 1/0 per entry.
    private const string AcknowledgeSucceededScript = """
        local acked, done = {}, {}
        for i = 3, #ARGV do
          local id = ARGV[i]
          local state = redis.pcall('HGET', KEYS[i], 'state')
          if state == 'succeeded' and #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) == 1 then
            acked[#acked + 1] = id
            done[i - 2] = 1
          else
            done[i - 2] = 0
          end
        end
        if #acked > 0 then
          redis.call('XACK', KEYS[1], ARGV[1], unpack(acked))
          redis.call('HDEL', KEYS[2], unpack(acked))
          redis.call('XDEL', KEYS[1], unpack(acked))
        end
        return done
        """;

    /// <summary>Acknowledges an entry whose event had already succeeded: nothing to record, nothing to run.</summary>
    public Task AcknowledgeAsync(LaneEntry entry)
    {
        var transaction = redis.GetDatabase().CreateTransaction();
        _ = AcknowledgeAsync(transaction, entry.EntryId);
        return CommitAsync(transaction);
    }

    /// <summary>
    /// Queues the acknowledgement of successes on <paramref name="transaction"/>, after their status writes: each entry
    /// is acknowledged only if its event now reads <c>succeeded</c> and <paramref name="consumer"/> still holds it.
    /// </summary>
    /// <returns>per entry, whether it was acknowledged.</returns>
    internal static async Task<bool[]> AcknowledgeSucceededAsync(ITransaction transaction, string consumer, IReadOnlyList<LaneEntry> entries)
    {
        RedisKey[] keys = [CpuLaneStreams.Stream, CpuLaneStreams.Started, .. entries.Select(e => EventStatusStore.Key(e.Id))];
        RedisValue[] values = [CpuLaneStreams.Group, consumer, .. entries.Select(e => e.EntryId)];
        var reply = (RedisResult[])(await transaction.ScriptEvaluateAsync(AcknowledgeSucceededScript, keys, values))!;
        return [.. reply.Select(r => (int)r == 1)];
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
