namespace EventPipeline.Bench.Chaos;

/// <summary>
/// Injects faults at random (seeded): SIGKILL (a crash; the resource is started again through the AppHost), SIGSTOP for
/// 1–8 s then SIGCONT (a freeze: a GC pause, a stalled disk, a VM steal), and SIGTERM (a deploy: the process drains and
/// is started again), one at a time, on producer-api, worker-cpu, worker-io, redis (redis-server) and rabbitmq
/// (rabbitmq-server). Only processes of this run's AppHost, by PID. A paused process is always resumed, also when
/// the run is cancelled or a step throws.
/// </summary>
public sealed class Nemesis(ResourceProcesses processes, ChaosHistory history, TextWriter log)
{
    public static readonly string[] Targets = ["producer-api", "worker-cpu", "worker-io", "redis", "rabbitmq"];

    private static readonly TimeSpan RestartTimeout = TimeSpan.FromSeconds(150);

    /// <param name="stop">ends the faults: a pause is cut short (and resumed); a restart under way is finished.</param>
    /// <param name="abort">the whole run is cancelled.</param>
    public async Task RunAsync(int seed, CancellationToken stop, CancellationToken abort)
    {
        var random = new Random(seed * 7919 + 13);
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(TimeSpan.FromMilliseconds(random.Next(1500, 5000)), stop);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            var target = Targets[random.Next(Targets.Length)];
            var roll = random.NextDouble();
            var pauseFor = TimeSpan.FromMilliseconds(random.Next(1000, 8001));
            try
            {
                if (roll < 0.45)
                {
                    await PauseAsync(target, pauseFor, stop);
                }
                else if (roll < 0.85)
                {
                    await KillAsync(target, abort);
                }
                else
                {
                    await TerminateAsync(target, abort);
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested || abort.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex)
            {
                history.Mark($"nemesis step on {target} failed: {ex.GetType().Name}: {ex.Message}");
                log.WriteLine($"[nemesis] {target}: {ex.GetType().Name}: {ex.Message} (the heal phase starts whatever is down)");
            }
        }
    }

    private async Task PauseAsync(string target, TimeSpan duration, CancellationToken stop)
    {
        var pids = processes.Processes(target);
        if (pids.Count == 0)
        {
            return;
        }

        IReadOnlyList<int> stopped = [];
        try
        {
            stopped = ResourceProcesses.Signal(pids, ResourceProcesses.SIGSTOP);
            history.CountFault($"pause-{target}");
            history.Mark($"SIGSTOP {target} pids {string.Join(' ', stopped)} for {duration.TotalSeconds:F1} s");
            log.WriteLine($"[nemesis] {history.Now.TotalSeconds:F0}s pause {target} ({string.Join(' ', stopped)}) for {duration.TotalSeconds:F1} s");
            await Task.Delay(duration, stop);
        }
        finally
        {
            // Always: a process left stopped would turn the rest of the run (and the heal) into a wait for nothing.
            ResourceProcesses.Signal(stopped, ResourceProcesses.SIGCONT);
            history.Mark($"SIGCONT {target}");
        }
    }

    private async Task KillAsync(string target, CancellationToken abort)
    {
        var pids = processes.Processes(target);
        if (pids.Count == 0)
        {
            return;
        }

        var killed = ResourceProcesses.Signal(pids, ResourceProcesses.SIGKILL);
        history.CountFault($"kill-{target}");
        history.Mark($"SIGKILL {target} pids {string.Join(' ', killed)}");
        log.WriteLine($"[nemesis] {history.Now.TotalSeconds:F0}s kill {target} ({string.Join(' ', killed)})");
        await RestartAsync(target, TimeSpan.FromSeconds(30), abort);
    }

    private async Task TerminateAsync(string target, CancellationToken abort)
    {
        if (processes.MainPid(target) is not { } service)
        {
            return;
        }

        ResourceProcesses.Signal([service], ResourceProcesses.SIGTERM);
        history.CountFault($"term-{target}");
        history.Mark($"SIGTERM {target} pid {service}");
        log.WriteLine($"[nemesis] {history.Now.TotalSeconds:F0}s terminate {target} ({service})");
        // Workers drain for up to 25 s; a node that does not stop by then is killed (still this run's PIDs).
        await RestartAsync(target, TimeSpan.FromSeconds(45), abort);
    }

    private async Task RestartAsync(string target, TimeSpan stopWait, CancellationToken stop)
    {
        try
        {
            await processes.WaitStoppedAsync(target, stopWait, stop);
        }
        catch (OperationCanceledException) when (!stop.IsCancellationRequested)
        {
            var left = processes.Processes(target);
            history.Mark($"{target} still running {stopWait.TotalSeconds:F0} s after the signal (state {processes.State(target)}): SIGKILL {string.Join(' ', left)}");
            ResourceProcesses.Signal(left, ResourceProcesses.SIGKILL);
            await processes.WaitStoppedAsync(target, TimeSpan.FromSeconds(30), stop);
        }

        await processes.StartAsync(target, RestartTimeout, stop);
        history.Mark($"{target} running again as {processes.RootPid(target)}");
        log.WriteLine($"[nemesis] {history.Now.TotalSeconds:F0}s {target} healthy again ({processes.RootPid(target)})");
    }
}
