using EventPipeline.Bench.Observe;

namespace EventPipeline.Bench.Report;

/// <summary>Latency figures in milliseconds over <see cref="Count"/> events.</summary>
public sealed record LatencySummary(int Count, double P50, double P95, double P99, double Max)
{
    /// <summary>Nearest-rank percentiles (no interpolation: every figure is a latency some event really had).</summary>
    public static LatencySummary? Of(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        if (sorted.Length == 0)
        {
            return null;
        }

        double Rank(double p) => sorted[Math.Clamp((int)Math.Ceiling(p / 100 * sorted.Length) - 1, 0, sorted.Length - 1)];
        return new LatencySummary(sorted.Length, Rank(50), Rank(95), Rank(99), sorted[^1]);
    }
}

/// <summary>
/// The same PBKDF2 handler called directly on all cores: the rate the lane would reach with zero overhead. Timed in the
/// bench process after warm-up rounds, in several rounds before the system starts (<see cref="Before"/>) and again after
/// it stops (<see cref="After"/>), with nothing else of the bench running; the best round counts
/// (<see cref="EventsPerSecond"/>), and <see cref="Min"/>..<see cref="EventsPerSecond"/> is the spread.
/// </summary>
/// <param name="Events">PBKDF2 calls per timed round.</param>
/// <param name="Seconds">The best round's duration.</param>
public sealed record CeilingResult(int Events, int Threads, double Seconds, double EventsPerSecond, IReadOnlyList<double>? Timings = null)
{
    public int Iterations { get; init; }
    public int WarmupRounds { get; init; }
    public IReadOnlyList<double>? Before { get; init; }
    public IReadOnlyList<double>? After { get; init; }

    /// <summary>The slowest timed round: with <see cref="EventsPerSecond"/>, the spread.</summary>
    public double? Min { get; init; }

    public double? Median { get; init; }

    /// <summary>Combines the rounds timed before the system started and after it stopped.</summary>
    public static CeilingResult Of(int calls, int iterations, int warmupRounds, IReadOnlyList<double> before, IReadOnlyList<double> after)
    {
        var all = before.Concat(after).Order().ToArray();
        var best = all[^1];
        return new CeilingResult(calls, Environment.ProcessorCount, Math.Round(calls / best, 3), best, all)
        {
            Iterations = iterations,
            WarmupRounds = warmupRounds,
            Before = before,
            After = after,
            Min = all[0],
            Median = all[all.Length / 2],
        };
    }
}

/// <summary>Everything one scenario measured. Written as JSON; the markdown and the chart are made from it.</summary>
public sealed record ScenarioResult
{
    public required string Name { get; init; }
    public required string Mode { get; init; }
    public required string Workload { get; init; }
    public required string EventType { get; init; }
    public required string Lane { get; init; }
    public int Iterations { get; init; }
    public int DelayMs { get; init; }
    public int Events { get; init; }
    public int Batch { get; init; }
    public int Connections { get; init; }
    public double? Rate { get; init; }
    public double? DurationSeconds { get; init; }

    /// <summary>Events of the same workload and shape run just before, not reported (0: none).</summary>
    public int Warmup { get; init; }

    public int Requests { get; init; }
    public int Accepted { get; init; }
    public int Rejected { get; init; }
    public Dictionary<string, int> RejectedByStatus { get; init; } = [];
    public int Succeeded { get; init; }
    public int Dead { get; init; }

    /// <summary>Accepted but not succeeded by the deadline.</summary>
    public int Lost { get; init; }

    /// <summary>Events whose work ran to completion more than once; null when it cannot be told (see <see cref="DuplicateSource"/>).</summary>
    public int? Duplicated { get; init; }

    public required string DuplicateSource { get; init; }
    public bool DrainedBeforeDeadline { get; init; }

    public double EnqueueSeconds { get; init; }

    /// <summary>Accepted events per second: the first request sent → the last 202 received.</summary>
    public double EnqueueRate { get; init; }

    /// <summary>The first request sent → the last event's finishedAt.</summary>
    public double? DrainSeconds { get; init; }

    /// <summary>Succeeded events / <see cref="DrainSeconds"/>: HTTP ingest, queue and work together.</summary>
    public double? EndToEndRate { get; init; }

    /// <summary>acceptedAt → finishedAt of each succeeded event.</summary>
    public LatencySummary? Latency { get; init; }

    /// <summary>acceptedAt → startedAt (first attempt picked up by a worker).</summary>
    public LatencySummary? Pickup { get; init; }

    public CeilingResult? Ceiling { get; init; }

    /// <summary><see cref="EndToEndRate"/> / the no-queue ceiling.</summary>
    public double? CeilingRatio { get; init; }

    /// <summary>
    /// CPU time (utime+stime) of all measured services together over the scenario, per accepted event, in µs; each
    /// service's share is <see cref="ProcessUsage.CpuUsPerEvent"/>.
    /// </summary>
    public double? CpuUsPerEvent { get; init; }

    /// <summary>The bench client's own CPU per accepted event (load generation and status reads; not in <see cref="CpuUsPerEvent"/>).</summary>
    public double? ClientCpuUsPerEvent { get; init; }

    /// <summary>
    /// The whole machine's busy CPU over the scenario in % of one core (200 = both cores of a 2-core machine busy).
    /// </summary>
    public double? MachineCpuPercentOfOneCore { get; init; }

    /// <summary>
    /// What the machine spent outside the measured services and the bench client (Prometheus, the orchestrator, the
    /// kernel's own threads, anyone else on the machine), in % of one core.
    /// </summary>
    public double? OtherCpuPercentOfOneCore { get; init; }

    public IReadOnlyList<ProcessUsage> Processes { get; init; } = [];
    public long PeakCpuDepth { get; init; }
    public long PeakCpuLag { get; init; }
    public long PeakIoDepth { get; init; }
    public int LaneSampleFailures { get; init; }
    public IReadOnlyList<LaneSample> LaneSamples { get; init; } = [];
    public string? Chart { get; init; }
}

/// <summary>Idle cost: each service's CPU over a window with no load.</summary>
public sealed record IdleResult(double Seconds, IReadOnlyList<ProcessUsage> Processes);

/// <summary>Where and when the run happened: the figures mean little without the machine's size and load.</summary>
public sealed record MachineInfo(int Cores, string CpuModel, string LoadAverageBefore, string? LoadAverageAfter, double MemoryGb, string Configuration)
{
    public static MachineInfo Capture(string configuration)
    {
        var model = File.Exists("/proc/cpuinfo")
            ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "unknown"
            : "unknown";
        var memKb = File.Exists("/proc/meminfo")
            ? File.ReadLines("/proc/meminfo").Where(l => l.StartsWith("MemTotal:", StringComparison.Ordinal))
                .Select(l => long.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture)).FirstOrDefault()
            : 0;
        return new MachineInfo(Environment.ProcessorCount, model, LoadAverage(), null, Math.Round(memKb / 1024.0 / 1024.0, 1), configuration);
    }

    public static string LoadAverage() =>
        File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "unknown";
}

/// <summary>A target of issue 9, judged against what was measured. Reported, never asserted.</summary>
public sealed record TargetVerdict(string Target, string Measured, bool? Met);

/// <summary>One invocation of the tool: machine, command, scenarios, and (for <c>suite</c>) the targets.</summary>
public sealed record BenchRun
{
    public required string Label { get; init; }
    public required string CommandLine { get; init; }
    public required DateTimeOffset StartedAt { get; init; }
    public required MachineInfo Machine { get; set; }
    public required string Target { get; init; }
    public List<ScenarioResult> Scenarios { get; } = [];
    public IdleResult? Idle { get; set; }
    public List<TargetVerdict> Targets { get; } = [];

    /// <summary>The no-queue PBKDF2 ceiling of the run (also copied into each PBKDF2 scenario).</summary>
    public CeilingResult? Ceiling { get; set; }
}
