using Microsoft.Extensions.Options;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// How many entries this consumer may take up at once (charged a run, waiting for a core or computing): the bound
/// <see cref="SuspectIsolationGate"/> admits entries under, of which the handlers working (2 ×: the other half write
/// their successes meanwhile) and the buffer's fill (2 ×, <see cref="LaneBuffer"/>) follow.
/// </summary>
/// <remarks>
/// A larger bound means larger start batches and reads (fewer round trips per event: with noop jobs on 2 cores, 64
/// instead of 16 cost worker-cpu 20–48 µs less per event, docs/benchmarks.md). But the entries charged when a
/// consumer dies — those taken up and those whose success is still being written, up to 2 × the bound — become
/// suspects, and each then runs alone, one after another, in the consumer that claims them. So with
/// <see cref="CpuLaneOptions.MaxStarted"/> 0 the bound rises above <see cref="CpuLaneOptions.StartedBase"/> only as far
/// as 2 × bound × (compute time per job, as recent jobs measured) stays within
/// <see cref="CpuLaneOptions.StartedWorkBudget"/>, and at most to <see cref="CpuLaneOptions.StartedCeiling"/>: short
/// jobs get the large batches, long ones (PBKDF2, milliseconds each) keep the base bound, and what a crash leaves to
/// run alone is bounded in run time. The estimate is a moving average (weight 1/8), so one long job among short
/// ones lowers the bound at once (a 2 ms job alone lifts it past 250 µs) and the short jobs after it raise it again
/// within a few dozen. It can only follow jobs already measured: entries taken up just before a backlog turns from
/// short jobs to long ones are charged under the higher bound.
/// </remarks>
public sealed class StartedBound
{
    /// <summary>Weight of the latest job in the estimate.</summary>
    internal const double Weight = 1.0 / 8;

    private readonly ILogger<StartedBound> _logger;
    private readonly double _budgetTicks;
    private readonly Lock _lock = new();

    // Guarded by _lock: the estimate (TimeSpan ticks per job, NaN before the first job), and the signal of the next
    // raise, replaced at each raise after the bound was written (so whoever reads it before the bound sees that raise).
    private double _estimate = double.NaN;
    private volatile TaskCompletionSource _nextRaise = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile int _current;

    public StartedBound(IOptions<CpuLaneOptions> options, ILogger<StartedBound> logger)
    {
        _logger = logger;
        var o = options.Value;
        Base = o.StartedBase;
        Ceiling = o.StartedCeiling;
        IsAdaptive = o.IsStartedAdaptive && Ceiling > Base && o.StartedWorkBudget > TimeSpan.Zero;
        _budgetTicks = o.StartedWorkBudget.Ticks;
        _current = Base;
    }

    /// <summary>The bound while jobs are long or not yet measured (fixed: the only one).</summary>
    public int Base { get; }

    /// <summary>The highest bound; the consumer starts 2 × this many handler tasks and sizes its buffer's channel for it.</summary>
    public int Ceiling { get; }

    public bool IsAdaptive { get; }

    /// <summary>Entries that may be taken up now.</summary>
    public int Current => _current;

    /// <summary>Handlers that take entries now: twice the bound, so that while half of them wait on their success being written the other half start new entries.</summary>
    public int ActiveHandlers => 2 * _current;

    /// <summary>Compute time per job, as recent jobs measured (null before the first).</summary>
    public TimeSpan? Estimate
    {
        get
        {
            lock (_lock)
            {
                return double.IsNaN(_estimate) ? null : TimeSpan.FromTicks((long)_estimate);
            }
        }
    }

    /// <summary>Completes at the next raise of the bound. Read it before <see cref="Current"/>, so that a raise between the two is not missed.</summary>
    public Task NextRaise => _nextRaise.Task;

    /// <summary>Raised (outside any lock) after the bound rose: waiters it may admit now.</summary>
    public event Action? Raised;

    /// <summary>The bound for a compute time per job: as many as fit twice in the budget, between base and ceiling.</summary>
    public int BoundFor(TimeSpan perJob)
    {
        if (!IsAdaptive)
        {
            return Base;
        }

        if (perJob <= TimeSpan.Zero)
        {
            return Ceiling;
        }

        var fits = _budgetTicks / (2.0 * perJob.Ticks);
        return fits >= Ceiling ? Ceiling : Math.Max(Base, (int)fits);
    }

    /// <summary>Records the compute time of one job (from the start of its work to its end, as the handler saw it).</summary>
    public void Observe(TimeSpan compute)
    {
        if (!IsAdaptive)
        {
            return;
        }

        int before, after;
        double estimate;
        TaskCompletionSource? raised = null;
        lock (_lock)
        {
            var ticks = Math.Max(0, compute.Ticks);
            _estimate = estimate = double.IsNaN(_estimate) ? ticks : _estimate + ((ticks - _estimate) * Weight);
            before = _current;
            after = BoundFor(TimeSpan.FromTicks((long)estimate));
            // Lowered at once; raised by a quarter at least (or to the ceiling): each raise wakes every parked handler,
            // and with job times that jitter around a step a raise of one at a time came on ~40 % of jobs (review of
            // session 10, F1).
            if (after == before || (after > before && after < Ceiling && after < before + Math.Max(1, before / 4)))
            {
                return;
            }

            _current = after;
            if (after > before)
            {
                raised = _nextRaise;
                _nextRaise = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }
        }

        if (_logger.IsEnabled(LogLevel.Debug))
        {
            _logger.LogDebug("Started bound {Before} -> {After} (recent jobs compute {Estimate:F1} µs each)", before, after, estimate / TimeSpan.TicksPerMicrosecond);
        }

        if (raised is not null)
        {
            try
            {
                Raised?.Invoke();
            }
            finally
            {
                // Parked handlers wake whatever a subscriber does.
                raised.TrySetResult();
            }
        }
    }
}
