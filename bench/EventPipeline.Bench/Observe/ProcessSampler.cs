namespace EventPipeline.Bench.Observe;

/// <summary>What one service cost during a scenario.</summary>
public sealed record ProcessUsage(
    string Resource,
    IReadOnlyList<int> Pids,
    double PeakRssMb,
    double HighWaterRssMb,
    double CpuSeconds,
    double CpuPercentOfOneCore)
{
    /// <summary><see cref="CpuSeconds"/> per accepted event of the scenario, in µs (null for idle windows).</summary>
    public double? CpuUsPerEvent { get; init; }
}

/// <summary>
/// Watches the services' processes: resident memory sampled every 100 ms (its peak during the scenario), VmHWM (the peak
/// since the process started), and CPU time used between start and stop (utime + stime from /proc/&lt;pid&gt;/stat).
/// </summary>
public sealed class ProcessSampler(IReadOnlyDictionary<string, int> rootPids, TimeSpan interval) : IAsyncDisposable
{
    private static readonly TimeSpan RescanEvery = TimeSpan.FromSeconds(2);
    private readonly CancellationTokenSource _stop = new();
    private readonly Dictionary<string, IReadOnlyList<int>> _processes = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> _peakRss = new(StringComparer.Ordinal);
    private readonly Dictionary<int, TimeSpan> _cpuAtStart = [];
    private System.Diagnostics.Stopwatch _clock = new();
    private Task? _loop;

    public void Start()
    {
        if (!ProcFs.IsAvailable)
        {
            return;
        }

        Rescan();
        lock (_cpuAtStart)
        {
            foreach (var pid in _processes.Values.SelectMany(p => p))
            {
                _cpuAtStart[pid] = ProcFs.CpuTime(pid) ?? TimeSpan.Zero;
            }
        }

        _clock = System.Diagnostics.Stopwatch.StartNew();
        _loop = Task.Run(() => LoopAsync(_stop.Token));
    }

    private void Rescan()
    {
        var found = ProcFs.ServiceProcesses(rootPids);
        lock (_processes)
        {
            foreach (var (resource, pids) in found)
            {
                _processes[resource] = pids;
            }
        }
    }

    private async Task LoopAsync(CancellationToken cancellationToken)
    {
        using var timer = new PeriodicTimer(interval);
        var sinceRescan = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            while (await timer.WaitForNextTickAsync(cancellationToken))
            {
                if (sinceRescan.Elapsed > RescanEvery)
                {
                    Rescan(); // a broker may start helper processes (RabbitMQ's erl_child_setup, inet_gethost)
                    sinceRescan.Restart();
                }

                SampleMemory();
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private void SampleMemory()
    {
        lock (_processes)
        {
            foreach (var (resource, pids) in _processes)
            {
                var rss = pids.Sum(pid => ProcFs.Memory(pid)?.Rss ?? 0);
                _peakRss[resource] = Math.Max(_peakRss.GetValueOrDefault(resource), rss);
            }
        }
    }

    /// <summary>Stops sampling and returns each service's usage since <see cref="Start"/>.</summary>
    public async Task<IReadOnlyList<ProcessUsage>> StopAsync()
    {
        await _stop.CancelAsync();
        if (_loop is not null)
        {
            await _loop;
        }

        if (!ProcFs.IsAvailable)
        {
            return [];
        }

        var wall = _clock.Elapsed.TotalSeconds;
        SampleMemory();
        var result = new List<ProcessUsage>();
        lock (_processes)
        {
            foreach (var (resource, pids) in _processes)
            {
                var cpu = TimeSpan.Zero;
                foreach (var pid in pids)
                {
                    if (ProcFs.CpuTime(pid) is { } now)
                    {
                        cpu += now - _cpuAtStart.GetValueOrDefault(pid, TimeSpan.Zero);
                    }
                }

                var hwm = pids.Sum(pid => ProcFs.Memory(pid)?.Hwm ?? 0);
                result.Add(new ProcessUsage(resource, pids, Mb(_peakRss.GetValueOrDefault(resource)), Mb(hwm),
                    Math.Round(cpu.TotalSeconds, 3), wall > 0 ? Math.Round(100 * cpu.TotalSeconds / wall, 2) : 0));
            }
        }

        return result;
    }

    private static double Mb(long bytes) => Math.Round(bytes / (1024.0 * 1024.0), 1);

    public async ValueTask DisposeAsync()
    {
        if (!_stop.IsCancellationRequested)
        {
            await StopAsync();
        }

        _stop.Dispose();
    }
}
