using EventPipeline.Shared;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// Acknowledgements. An entry is acknowledged only together with its recorded outcome, or not at all. A batch of
/// successes is recorded and acknowledged by one script (<see cref="RecordSucceededAsync"/>): each status is written,
/// then only the entries whose status now reads <c>succeeded</c> and which this consumer still holds are acknowledged
/// (one XACK, HDEL and XDEL for all). A status write that fails (a wrong-type key, Redis out of memory) leaves its
/// entry pending and does not stop the others: Redis rolls nothing back, so the check reads what was really written.
/// Other outcomes queue their write and the XACK + XDEL in one MULTI/EXEC (<see cref="AcknowledgeAsync(ITransaction, RedisValue)"/>).
/// Deleting acknowledged entries keeps the stream equal to the lane's unfinished work (its length is the depth).
/// </summary>
public sealed class EntryAcknowledger(IConnectionMultiplexer redis)
{
    // KEYS[1] stream, KEYS[2] started-runs hash, KEYS[2 + i] status hash of entry i; ARGV[1] group, ARGV[2] consumer,
    // ARGV[3] now (unix ms), ARGV[4] status ttl (s), then entry id, attempt, result of each entry. Returns three arrays,
    // one element per entry: recorded (1 recorded here, 0 already succeeded, -1 the write failed), acknowledged (1/0),
    // and the write's error ('' when none).
    private const string RecordSucceededScript = EventStatusStore.RecordSucceededLua + """
        local recorded, acked, errors, done = {}, {}, {}, {}
        for i = 3, #KEYS do
          local n = i - 2
          local a = 5 + (n - 1) * 3
          local id = ARGV[a]
          local ok, r = pcall(record_succeeded, KEYS[i], ARGV[a + 1], ARGV[3], ARGV[a + 2], ARGV[4])
          local succeeded = ok
          if ok then
            recorded[n], errors[n] = r, ''
          else
            recorded[n], errors[n] = -1, type(r) == 'table' and (r.err or 'error') or tostring(r)
            -- Part of the write may have landed: what counts is whether the status reads succeeded now.
            succeeded = redis.pcall('HGET', KEYS[i], 'state') == 'succeeded'
          end
          if succeeded and #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) == 1 then
            done[#done + 1] = id
            acked[n] = 1
          else
            acked[n] = 0
          end
        end
        if #done > 0 then
          redis.call('XACK', KEYS[1], ARGV[1], unpack(done))
          redis.call('HDEL', KEYS[2], unpack(done))
          redis.call('XDEL', KEYS[1], unpack(done))
        end
        return { recorded, acked, errors }
        """;

    /// <summary>What <see cref="RecordSucceededAsync"/> did with one success.</summary>
    /// <param name="Recorded">true: recorded now; false: the event had already succeeded (a redelivery).</param>
    /// <param name="Acknowledged">false: the entry stays pending (another consumer claimed it, or its write failed).</param>
    /// <param name="Error">why the status write failed, or null.</param>
    internal readonly record struct SuccessOutcome(bool Recorded, bool Acknowledged, string? Error);

    /// <summary>Acknowledges an entry whose event had already succeeded: nothing to record, nothing to run.</summary>
    public Task AcknowledgeAsync(LaneEntry entry)
    {
        var transaction = redis.GetDatabase().CreateTransaction();
        _ = AcknowledgeAsync(transaction, entry.EntryId);
        return CommitAsync(transaction);
    }

    /// <summary>
    /// Records the successes and acknowledges each entry whose event now reads <c>succeeded</c> and which
    /// <paramref name="consumer"/> still holds, in one script (one round trip, run as EVALSHA).
    /// </summary>
    internal static async Task<SuccessOutcome[]> RecordSucceededAsync(IDatabaseAsync db, string consumer, IReadOnlyList<(LaneEntry Entry, string Result)> successes, long ttlSeconds)
    {
        var keys = new RedisKey[successes.Count + 2];
        var values = new RedisValue[successes.Count * 3 + 4];
        keys[0] = CpuLaneStreams.Stream;
        keys[1] = CpuLaneStreams.Started;
        values[0] = CpuLaneStreams.Group;
        values[1] = consumer;
        values[2] = EventStatusStore.Now;
        values[3] = ttlSeconds;
        for (var i = 0; i < successes.Count; i++)
        {
            var (entry, result) = successes[i];
            keys[i + 2] = EventStatusStore.Key(entry.Id);
            values[4 + i * 3] = entry.EntryId;
            values[5 + i * 3] = entry.Attempt;
            values[6 + i * 3] = result;
        }

        var reply = (RedisResult[])(await db.ScriptEvaluateAsync(RecordSucceededScript, keys, values))!;
        var recorded = (RedisResult[])reply[0]!;
        var acked = (RedisResult[])reply[1]!;
        var errors = (RedisResult[])reply[2]!;
        var outcomes = new SuccessOutcome[successes.Count];
        for (var i = 0; i < outcomes.Length; i++)
        {
            var error = errors[i].ToString();
            outcomes[i] = new SuccessOutcome((int)recorded[i] == 1, (int)acked[i] == 1, string.IsNullOrEmpty(error) ? null : error);
        }

        return outcomes;
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
