using EventPipeline.Contracts;
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
/// A start is counted (<see cref="CpuLaneStreams.Started"/>) only here, when a compute slot is already held and the
/// work follows at once: an entry that waited for a core and never ran (a drain timeout, a crash beside it) is not
/// charged a run, so it neither becomes a suspect nor moves towards <see cref="CpuLaneOptions.MaxDeliveries"/>.
/// </remarks>
public sealed class EntryOwnership(IConnectionMultiplexer redis, LaneBuffer buffer)
{
    /// <summary>What <see cref="TryStartAsync"/> found.</summary>
    public enum Start
    {
        /// <summary>Counted as a run: run the work now.</summary>
        Started,

        /// <summary>Another consumer claimed the entry: leave it alone.</summary>
        ClaimedByAnother,

        /// <summary>The event already succeeded (a redelivery): acknowledge without running.</summary>
        AlreadySucceeded,
    }

    // Counts the start only if the entry is still pending to this consumer and its event has not succeeded yet.
    private static readonly LuaScript StartScript = LuaScript.Prepare("""
        if #redis.call('XPENDING', @stream, @group, @entry, @entry, 1, @consumer) == 0 then return 1 end
        if redis.call('HGET', @status, 'state') == @succeeded then return 2 end
        redis.call('HINCRBY', @started, @entry, 1)
        return 0
        """);

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
    /// Records that the work of <paramref name="entry"/> starts now (call it holding a compute slot, right before the
    /// work): if this process dies during the work, whoever claims the entry knows it was running (a suspect).
    /// </summary>
    public async Task<Start> TryStartAsync(LaneEntry entry) =>
        (Start)(int)await redis.GetDatabase().ScriptEvaluateAsync(StartScript, new
        {
            stream = CpuLaneStreams.Stream,
            started = CpuLaneStreams.Started,
            status = EventStatusStore.Key(entry.Id),
            group = CpuLaneStreams.Group,
            consumer = buffer.ConsumerName,
            entry = entry.EntryId,
            succeeded = EventStates.Succeeded,
        });

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
