namespace EventPipeline.Bench.Chaos;

/// <summary>
/// Injects faults at random (seeded): SIGKILL (a crash; the resource is started again through the AppHost), SIGSTOP for
/// 1–8 s then SIGCONT (a freeze: a GC pause, a stalled disk, a VM steal), and SIGTERM (a deploy: the process drains and
/// is started again), one at a time, on one instance of producer-api, worker-cpu, worker-io and of the brokers: redis
/// (redis-server) and rabbitmq (rabbitmq-server), or in Cluster mode one node (<c>rabbitmq-0..2</c>,
/// <c>redis-0..2</c>, <c>redis-sentinel-0..2</c>) — so a majority of each broker stays up. With
/// <c>majorityFaults</c>, a tenth of the steps SIGKILL two nodes of one broker at once and start them again after a
/// few seconds: while they are down the API must answer 503, never a wrong 202. Only processes of this run's AppHost,
/// by PID. A paused process is always resumed, also when the run is cancelled or a step throws.
/// </summary>
public sealed class Nemesis(ResourceProcesses processes, ChaosHistory history, TextWriter log, IReadOnlyList<string> targets, bool majorityFaults = false)
{
    public static readonly string[] SingleTargets = ["producer-api", "worker-cpu", "worker-io", "redis", "rabbitmq"];

    public static readonly string[] ClusterTargets =
    [
        "producer-api", "worker-cpu", "worker-io",
        "rabbitmq-0", "rabbitmq-1", "rabbitmq-2", "redis-0", "redis-1", "redis-2", "redis-sentinel-0", "redis-sentinel-1", "redis-sentinel-2",
    ];

    /// <summary>The resources the nemesis picks from, for the AppHost's <c>Brokers:Topology</c>.</summary>
    public static IReadOnlyList<string> TargetsFor(string topology) => topology == "Cluster" ? ClusterTargets : SingleTargets;

    /// <summary>Two nodes of one broker: a majority of three.</summary>
    private static readonly string[][] Majorities = [["rabbitmq-0", "rabbitmq-1", "rabbitmq-2"], ["redis-0", "redis-1", "redis-2"]];

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

            var resource = targets[random.Next(targets.Count)];
            var instances = processes.Instances(resource);
            var target = instances[random.Next(instances.Count)];
            var roll = random.NextDouble();
            var pauseFor = TimeSpan.FromMilliseconds(random.Next(1000, 8001));
            var majority = majorityFaults && random.NextDouble() < 0.1 ? Majorities[random.Next(Majorities.Length)] : null;
            var spared = random.Next(3);
            try
            {
                if (majority is not null)
                {
                    await KillMajorityAsync([.. majority.Where((_, i) => i != spared)], pauseFor, abort);
                }
                else if (roll < 0.45)
                {
                    await PauseAsync(resource, target, pauseFor, stop);
                }
                else if (roll < 0.85)
                {
                    await KillAsync(resource, target, abort);
                }
                else
                {
                    await TerminateAsync(resource, target, abort);
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

    /// <param name="resource">the resource's name: faults are counted per resource, whichever replica they hit.</param>
    /// <param name="target">the instance: the resource itself, or one of its replicas.</param>
    private async Task PauseAsync(string resource, string target, TimeSpan duration, CancellationToken stop)
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
            history.CountFault($"pause-{resource}");
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

    private async Task KillAsync(string resource, string target, CancellationToken abort)
    {
        var pids = processes.Processes(target);
        if (pids.Count == 0)
        {
            return;
        }

        var killed = ResourceProcesses.Signal(pids, ResourceProcesses.SIGKILL);
        history.CountFault($"kill-{resource}");
        history.Mark($"SIGKILL {target} pids {string.Join(' ', killed)}");
        log.WriteLine($"[nemesis] {history.Now.TotalSeconds:F0}s kill {target} ({string.Join(' ', killed)})");
        await RestartAsync(target, TimeSpan.FromSeconds(30), abort);
    }

    /// <summary>SIGKILL two nodes of one broker at once, leave them down for <paramref name="downFor"/>, start both again.</summary>
    private async Task KillMajorityAsync(string[] nodes, TimeSpan downFor, CancellationToken abort)
    {
        var killed = nodes.SelectMany(node => ResourceProcesses.Signal(processes.Processes(node), ResourceProcesses.SIGKILL)).ToList();
        history.CountFault($"kill-majority-{nodes[0][..nodes[0].LastIndexOf('-')]}");
        history.Mark($"SIGKILL {string.Join(" and ", nodes)} (a majority) pids {string.Join(' ', killed)} for {downFor.TotalSeconds:F1} s");
        log.WriteLine($"[nemesis] {history.Now.TotalSeconds:F0}s kill a majority: {string.Join(", ", nodes)} ({string.Join(' ', killed)})");
        await Task.Delay(downFor, abort);
        await Task.WhenAll(nodes.Select(node => RestartAsync(node, TimeSpan.FromSeconds(30), abort)));
    }

    private async Task TerminateAsync(string resource, string target, CancellationToken abort)
    {
        if (processes.MainPid(target) is not { } service)
        {
            return;
        }

        ResourceProcesses.Signal([service], ResourceProcesses.SIGTERM);
        history.CountFault($"term-{resource}");
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
