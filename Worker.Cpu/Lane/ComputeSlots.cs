using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// The cores: at most <see cref="CpuLaneOptions.Handlers"/> entries compute at once. An entry is charged a run
/// (<see cref="LaneWriter.StartAsync"/>) before it waits here, so the round trip overlaps other entries' work;
/// when the drain times out, every entry still waiting for a core has its charge taken back before the process exits,
/// so only the entries that were computing count as runs that died with this consumer. After the deadline nothing is
/// charged any more.
/// </summary>
public sealed class ComputeSlots(
    EntryOwnership ownership,
    LaneWriter writer,
    IOptions<ConfigurationOptions> redisOptions,
    IOptions<CpuLaneOptions> options,
    ILogger<ComputeSlots> logger)
{
    /// <summary>
    /// What the host allows after the drain timeout (<c>HostOptions.ShutdownTimeout</c> = DrainTimeout + the read loop's last
    /// read + this, set in
    /// Extensions.cs; the Kubernetes grace period covers it): the wait for the write in flight (up to the Redis
    /// client's timeout plus one heartbeat) and <see cref="TakeBackBudget"/> after it.
    /// </summary>
    public static readonly TimeSpan ShutdownMargin = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Left of the margin for the take-back script, the writer's last successes and the telemetry flush. Redis has just
    /// answered the write before them, so they need a fraction of its timeout; one that stalls again past this makes
    /// suspects, as any Redis failure in the lane does.
    /// </summary>
    public static readonly TimeSpan TakeBackBudget = TimeSpan.FromSeconds(3);

    private readonly TimeSpan _chargeAnswerLimit = ChargeAnswerLimit(redisOptions.Value, logger);

    private readonly SemaphoreSlim _cores = new(options.Value.EffectiveHandlers, options.Value.EffectiveHandlers);
    private readonly CancellationTokenSource _drainExpired = new();
    private readonly TaskCompletionSource _noChargeInFlight = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Guarded by itself: entries charged and not (yet) computing, charges in flight, and whether the drain expired.
    private readonly Dictionary<RedisValue, LaneEntry> _charged = [];
    private int _chargesInFlight;
    private bool _expired;

    /// <summary>Charges the entry a run unless the drain has timed out (then null: nothing charged, leave it pending).</summary>
    public async Task<EntryOwnership.Start?> ChargeAsync(LaneEntry entry)
    {
        lock (_charged)
        {
            if (_expired)
            {
                return null;
            }

            _chargesInFlight++;
        }

        EntryOwnership.Start? start = null;
        try
        {
            start = await writer.StartAsync(entry);
            return start;
        }
        finally
        {
            lock (_charged)
            {
                if (start == EntryOwnership.Start.Started)
                {
                    _charged[entry.EntryId] = entry;
                }

                if (--_chargesInFlight == 0 && _expired)
                {
                    _noChargeInFlight.TrySetResult();
                }
            }
        }
    }

    /// <summary>
    /// Waits for a core for a charged entry. true: it holds one (call <see cref="Release"/> after the work); false: the
    /// drain timed out first, the entry must not run, and its charge is taken back by <see cref="TakeBackUnstartedAsync"/>.
    /// </summary>
    public async Task<bool> WaitForCoreAsync(LaneEntry entry)
    {
        try
        {
            await _cores.WaitAsync(_drainExpired.Token);
        }
        catch (OperationCanceledException)
        {
            return false;
        }

        lock (_charged)
        {
            if (!_expired)
            {
                if (_charged.Remove(entry.EntryId) && _charged.Count == 0)
                {
                    writer.NothingWaitsForCore();
                }

                return true;
            }
        }

        _cores.Release(); // a core came free just as the drain timed out: too late to start
        return false;
    }

    public void Release() => _cores.Release();

    /// <summary>
    /// Whether entries charged a run are waiting for a core: then every core that comes free has an entry to run, and
    /// a write may wait for others to join it (<see cref="LaneWriter"/>) without leaving a core idle.
    /// </summary>
    public bool WorkWaitingForCore
    {
        get
        {
            lock (_charged)
            {
                return _charged.Count > 0;
            }
        }
    }

    /// <summary>
    /// Takes back the charge of an entry that got a core but will not run here (another consumer claimed it).
    /// </summary>
    public Task TakeBackAsync(LaneEntry entry) => ownership.TakeBackStartsAsync([entry.EntryId]);

    /// <summary>
    /// On a drain timeout: charges nothing more, waits for charges already on their way, and takes back the charge of
    /// every entry that never got a core.
    /// </summary>
    public async Task TakeBackUnstartedAsync()
    {
        lock (_charged)
        {
            _expired = true;
            if (_chargesInFlight == 0)
            {
                _noChargeInFlight.TrySetResult();
            }
        }

        // Starts still queued in the writer are answered without being written; only the write in flight can still
        // charge entries, and it is answered within the Redis timeout. Waiting for it (not for a fixed time) is what
        // makes the take-back below see every charge: one landing after it would leave its entry processing and
        // charged, a false suspect for a whole ClaimTimeout.
        writer.StopStarting();
        await _drainExpired.CancelAsync();
        if (await Task.WhenAny(_noChargeInFlight.Task, Task.Delay(_chargeAnswerLimit)) != _noChargeInFlight.Task)
        {
            logger.LogWarning("Charges still unanswered {Limit} after the drain timed out; entries they charge are taken back by no one and look like suspects to whoever claims them", _chargeAnswerLimit);
        }

        RedisValue[] neverRan;
        lock (_charged)
        {
            neverRan = [.. _charged.Keys];
            _charged.Clear();
        }

        if (neverRan.Length == 0)
        {
            return;
        }

        try
        {
            await ownership.TakeBackStartsAsync(neverRan);
            logger.LogInformation("{Count} entries were still waiting for a core when the drain timed out; they stay pending, not counted as runs", neverRan.Length);
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
        {
            logger.LogWarning(ex, "Could not take back the runs of {Count} entries that never got a core; whoever claims them treats them as suspects", neverRan.Length);
        }
    }

    /// <summary>
    /// How long the write in flight can take to be answered: the Redis client fails it after its async timeout, noticed
    /// at its next heartbeat. A write Redis answers later than that is a Redis failure like any other timeout in the
    /// lane (its entries stay pending; a charge that lands after the client gave up makes a suspect). Bounded so that
    /// this wait and <see cref="TakeBackBudget"/> fit in <see cref="ShutdownMargin"/>.
    /// Read from the options the multiplexer was built from (Aspire's <c>AddRedisClient</c> connects with
    /// <c>IOptions&lt;ConfigurationOptions&gt;</c>), not from its <c>Configuration</c> string: that string has no key for
    /// the heartbeat, so one set in code would be read as the 1 s default.
    /// </summary>
    internal static TimeSpan ChargeAnswerLimit(ConfigurationOptions client, ILogger logger)
    {
        var answered = TimeSpan.FromMilliseconds(client.AsyncTimeout) + client.HeartbeatInterval;
        var fits = ShutdownMargin - TakeBackBudget;
        if (answered <= fits)
        {
            return answered;
        }

        logger.LogWarning("The Redis client's timeout ({Timeout} ms) is longer than a drain timeout's take-back can wait within the host's {Margin} margin; a start answered later than {Fits} after the drain timed out may stay charged",
            client.AsyncTimeout, ShutdownMargin, fits);
        return fits;
    }
}
