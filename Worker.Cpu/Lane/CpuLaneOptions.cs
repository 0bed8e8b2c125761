using System.ComponentModel.DataAnnotations;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>Settings of the CPU lane consumer, bound from <c>CpuLane</c> and validated at start.</summary>
public sealed class CpuLaneOptions
{
    /// <summary>Handlers running CPU work in parallel; 0 means one per processor.</summary>
    [Range(0, 1024)]
    public int Handlers { get; set; }

    /// <summary>Runs of one event before it is dead-lettered (first run included).</summary>
    [Range(1, 100)]
    public int MaxAttempts { get; set; } = 5;

    public TimeSpan RetryBaseDelay { get; set; } = TimeSpan.FromSeconds(1);

    public TimeSpan RetryMaxDelay { get; set; } = TimeSpan.FromMinutes(1);

    /// <summary>
    /// An entry whose consumer has not touched it for this long is taken over by another consumer. Live consumers
    /// refresh their entries every third of this, so it bounds crash-recovery time, not job length. A consumer that
    /// was paused for longer finds the entries taken over and leaves them to their new owner.
    /// </summary>
    public TimeSpan ClaimTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>How often each consumer looks for stale entries and due retries.</summary>
    public TimeSpan ClaimInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Runs that ended with their consumer dying, after which an entry is presumed to be what kills consumers and is
    /// dead-lettered unrun. Only runs count, not deliveries: an entry that merely sat in a dying consumer's buffer is
    /// not charged (the stream's own delivery count is reported beside it in the dead letter).
    /// </summary>
    [Range(1, 100)]
    public int MaxDeliveries { get; set; } = 5;

    /// <summary>On SIGTERM, how long in-flight and buffered work may take to finish.</summary>
    public TimeSpan DrainTimeout { get; set; } = TimeSpan.FromSeconds(25);

    /// <summary>How long handing a result on to the I/O lane (publish + confirm) may take before the attempt fails.</summary>
    public TimeSpan ForwardTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// How long one XREADGROUP blocks waiting for new entries. An entry is picked up as soon as it is added whatever this
    /// is; each BLOCK that ends empty wakes the idle worker (a reply, a socket thread, a thread-pool thread that spins
    /// before it sleeps), so it is long: 8 s (2 s before session 17). A stopping worker ends its read at once (an entry on
    /// its wake-up stream, <see cref="StreamEntryReader.WakeKey"/>); only when Redis stalls or refuses that write does the
    /// host wait for the read (the shutdown timeout counts it).
    /// </summary>
    public TimeSpan BlockTimeout { get; set; } = TimeSpan.FromSeconds(8);

    /// <summary>
    /// Entries taken up by handlers (charged a run, status <c>processing</c>, waiting for a core or computing) but not
    /// finished. Above <see cref="Handlers"/>, so that while some entries wait on their Redis round trips others keep
    /// every core busy. A value above 0 is a fixed bound. 0 (the default) adapts it to the jobs (<see cref="StartedBound"/>):
    /// <see cref="StartedBase"/> (8 × <see cref="EffectiveHandlers"/>) while jobs are long or not yet measured, up to
    /// <see cref="StartedCeiling"/> (32 ×) while the measured compute time of recent jobs times the entries a crash can
    /// leave charged stays within <see cref="StartedWorkBudget"/>: a crash's suspects are bounded in run time, not only
    /// in count. A drain timeout takes back the charge of those still waiting for a core, so it makes at most
    /// <see cref="Handlers"/>.
    /// </summary>
    [Range(0, 4096)]
    public int MaxStarted { get; set; }

    /// <summary>
    /// With <see cref="MaxStarted"/> 0: the compute time that the entries a crash can leave charged (2 × the bound: those
    /// taken up and those whose success is being written) may add up to, by the recent jobs' measure, before the bound
    /// stays at <see cref="StartedBase"/>. Each of them runs again alone after the crash, one after another, so this is
    /// about how long that takes (plus a round trip each). 0 keeps the bound at <see cref="StartedBase"/>.
    /// </summary>
    public TimeSpan StartedWorkBudget { get; set; } = TimeSpan.FromMilliseconds(5);

    /// <summary>Successes recorded (status, XACK, XDEL) by one script run at most.</summary>
    [Range(1, 4096)]
    public int AckBatchSize { get; set; } = 256;

    /// <summary>
    /// How long a batch of status writes (starts, successes) may wait for more to join it while entries already
    /// charged are waiting for a core (so no core idles meanwhile); 0 writes every batch at once. With long jobs the
    /// completions otherwise go one round trip each; a success's status and acknowledgement come at most this late.
    /// </summary>
    public TimeSpan WriteLinger { get; set; } = TimeSpan.FromMilliseconds(10);

    public int EffectiveHandlers => Handlers > 0 ? Handlers : Environment.ProcessorCount;

    /// <summary>Whether the started bound adapts to the jobs (<see cref="MaxStarted"/> 0) or is fixed.</summary>
    public bool IsStartedAdaptive => MaxStarted == 0;

    /// <summary>
    /// The started bound while jobs are long or not yet measured: <see cref="MaxStarted"/> when set (then fixed),
    /// else 8 × <see cref="EffectiveHandlers"/>; never below <see cref="EffectiveHandlers"/>.
    /// </summary>
    public int StartedBase => Math.Max(EffectiveHandlers, MaxStarted > 0 ? MaxStarted : EffectiveHandlers * 8);

    /// <summary>The highest started bound: <see cref="StartedBase"/> when fixed, else 32 × <see cref="EffectiveHandlers"/>, at most 4096 but never below the base.</summary>
    public int StartedCeiling => IsStartedAdaptive ? Math.Max(StartedBase, Math.Min(4096, EffectiveHandlers * 32)) : StartedBase;

    /// <summary>
    /// Room of the buffer's channel: 2 × <see cref="StartedCeiling"/>. The buffer fills only to 2 × the bound in force
    /// (<see cref="LaneBuffer.FreeSlots"/>), so a consumer of long jobs holds as few entries as with a fixed bound.
    /// </summary>
    public int BufferCapacity => StartedCeiling * 2;
}
