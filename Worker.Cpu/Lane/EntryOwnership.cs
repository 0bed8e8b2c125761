using EventPipeline.Shared;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// An entry belongs to the consumer the group's pending list names. Once another consumer has claimed an entry (this
/// one looked dead: a pause, a stall, a long GC longer than <see cref="CpuLaneOptions.ClaimTimeout"/>), this consumer
/// never takes it back, never starts it and never records a failure for it: the claimer owns its outcome. Every check
/// and the write it guards run in one script, so no claim can land between them.
/// </summary>
/// <remarks>
/// Runs are counted in <see cref="CpuLaneStreams.Started"/> by the start script (<see cref="LaneWriter"/>), when a handler
/// takes an entry up, just before it waits for a core, so the round trip overlaps other entries' work. A run that never got a core is taken back when the drain
/// times out (<see cref="TakeBackStartsAsync"/>), so deploys and scale-ins charge only the entries that were computing.
/// After a crash, entries that were waiting for a core beside the one running stay charged once; claimed, they are
/// suspects, and a suspect starts only when nothing else runs, so its later charges are all real runs.
/// </remarks>
public sealed class EntryOwnership(IConnectionMultiplexer redis, LaneBuffer buffer)
{
    /// <summary>What a start (<see cref="LaneWriter.StartAsync"/>) found.</summary>
    public enum Start
    {
        /// <summary>Counted as a run and marked <c>processing</c>: run the work now.</summary>
        Started,

        /// <summary>Another consumer claimed the entry: leave it alone.</summary>
        ClaimedByAnother,

        /// <summary>The event already succeeded (a redelivery): acknowledge without running.</summary>
        AlreadySucceeded,

        /// <summary>Cancelled before it started: acknowledge without running.</summary>
        Cancelled,

        /// <summary>Not started by its <c>expiresAt</c> (now recorded <c>expired</c>): acknowledge without running.</summary>
        Expired,
    }

    // KEYS[1] started-runs hash; ARGV entry ids. Takes one charged run back from each (the field goes at 0).
    private const string TakeBackScript = """
        for _, id in ipairs(ARGV) do
          if redis.call('HINCRBY', KEYS[1], id, -1) <= 0 then redis.call('HDEL', KEYS[1], id) end
        end
        return #ARGV
        """;

    private static readonly LuaScript HeldScript = LuaScript.Prepare("""
        return #redis.call('XPENDING', @stream, @group, @entry, @entry, 1, @consumer)
        """);

    // KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids. Resets the idle time of the entries still
    // pending to the consumer (XCLAIM JUSTID: not a delivery) and returns the ids another consumer has claimed.
    private const string RefreshScript = """
        local lost = {}
        for i = 3, #ARGV do
          local id = ARGV[i]
          if #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) == 1 then
            redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
          else
            lost[#lost + 1] = id
          end
        end
        return lost
        """;

    /// <summary>
    /// Takes back the runs charged to entries whose work never began (they were still waiting for a core when the
    /// drain timed out): this consumer's exit is not a run that died with them.
    /// </summary>
    public Task TakeBackStartsAsync(IReadOnlyCollection<RedisValue> entryIds) =>
        redis.GetDatabase().ScriptEvaluateAsync(TakeBackScript, [CpuLaneStreams.Started], [.. entryIds]);

    /// <summary>Whether the entry is still pending to this consumer (checked before recording a failure).</summary>
    public async Task<bool> IsHeldAsync(LaneEntry entry) =>
        (int)await redis.GetDatabase().ScriptEvaluateAsync(HeldScript, new
        {
            stream = CpuLaneStreams.Stream,
            group = CpuLaneStreams.Group,
            consumer = buffer.ConsumerName,
            entry = entry.EntryId,
        }) == 1;

    /// <summary>
    /// Keeps the entries this consumer holds fresh against claiming, but only those still pending to it: after a pause
    /// longer than the claim timeout, what another consumer claimed stays with that consumer.
    /// </summary>
    /// <returns>the ids another consumer has claimed (no longer refreshed; this consumer lets them go).</returns>
    public async Task<RedisValue[]> RefreshHeldAsync(IReadOnlyCollection<RedisValue> held)
    {
        var reply = await redis.GetDatabase().ScriptEvaluateAsync(RefreshScript, [CpuLaneStreams.Stream],
            [CpuLaneStreams.Group, buffer.ConsumerName, .. held]);
        return (RedisValue[])reply!;
    }
}
