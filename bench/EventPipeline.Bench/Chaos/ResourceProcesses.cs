using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using EventPipeline.Bench.Observe;
using Microsoft.Extensions.DependencyInjection;

namespace EventPipeline.Bench.Chaos;

/// <summary>
/// The processes of the resources this run's AppHost started, found by the PID Aspire reports for each resource
/// instance (<c>executable.pid</c>) and its descendants — never by name — and their lifecycle through the AppHost: the
/// AppHost does not restart a crashed process by itself, so a killed resource is started again with Aspire's own
/// <see cref="KnownResourceCommands.StartCommand"/>, exactly what the dashboard's Start button does. A resource with
/// replicas (the workers with <c>Workers:CpuReplicas</c>) has one instance per replica, each with its own id
/// (<c>worker-cpu-abcdefgh</c>): every method here takes an instance id, and <see cref="Instances"/> lists a resource's.
/// </summary>
public sealed class ResourceProcesses : IAsyncDisposable
{
    public const int SIGKILL = 9;
    public const int SIGTERM = 15;
    public const int SIGCONT = 18;
    public const int SIGSTOP = 19;

    private static readonly string[] Stopped = ["Exited", "Finished", "FailedToStart"];

    private readonly DistributedApplication app;
    private readonly ConcurrentDictionary<string, string> _nameOfInstance = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stopWatching = new();
    private readonly Task _watching;

    public ResourceProcesses(DistributedApplication app)
    {
        this.app = app;
        // Aspire looks a resource up by name only while it has one instance; replicas are known by their ids alone,
        // which its notifications carry (the current snapshot of every instance first, then each change).
        _watching = Task.Run(async () =>
        {
            try
            {
                await foreach (var update in app.ResourceNotifications.WatchAsync(_stopWatching.Token))
                {
                    _nameOfInstance[update.ResourceId] = update.Resource.Name;
                }
            }
            catch (OperationCanceledException) when (_stopWatching.IsCancellationRequested)
            {
                // Disposed.
            }
        });
    }

    /// <summary>
    /// The instance ids of <paramref name="resource"/> (one, or one per replica), in a stable order; the name itself
    /// while no notification named an instance yet (Aspire finds a single instance by its name).
    /// </summary>
    public IReadOnlyList<string> Instances(string resource)
    {
        var ids = _nameOfInstance.Where(i => i.Value == resource).Select(i => i.Key).Order(StringComparer.Ordinal).ToList();
        return ids.Count > 0 ? ids : [resource];
    }

    /// <summary>Waits until every resource named has <paramref name="count"/> instances known (replicas are created at start).</summary>
    public async Task WaitForInstancesAsync(string resource, int count, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var deadline = DateTimeOffset.UtcNow + timeout;
        while (_nameOfInstance.Count(i => i.Value == resource) < count)
        {
            if (DateTimeOffset.UtcNow > deadline)
            {
                throw new TimeoutException($"{resource} has {_nameOfInstance.Count(i => i.Value == resource)} instances, not {count}, after {timeout.TotalSeconds:F0} s");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(50), cancellationToken);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stopWatching.CancelAsync();
        await _watching;
        _stopWatching.Dispose();
    }

    /// <summary>The PID Aspire started the resource as, or null while it is not running.</summary>
    public int? RootPid(string instance) =>
        app.ResourceNotifications.TryGetCurrentState(instance, out var state)
        && state.Snapshot.State?.Text == KnownResourceStates.Running
        && state.Snapshot.Properties.FirstOrDefault(p => p.Name == "executable.pid")?.Value is { } pid
        && int.TryParse(Convert.ToString(pid, System.Globalization.CultureInfo.InvariantCulture), out var value)
            ? value
            : null;

    public string State(string instance) =>
        app.ResourceNotifications.TryGetCurrentState(instance, out var state) ? state.Snapshot.State?.Text ?? "?" : "?";

    public bool IsStopped(string instance) => Stopped.Contains(State(instance));

    /// <summary>
    /// The resource's processes: the root and its descendants (a project's <c>dotnet run</c> launcher included, so a
    /// kill takes down the resource as Aspire sees it; a broker's helper processes included, so a pause freezes it all).
    /// </summary>
    public IReadOnlyList<int> Processes(string instance)
    {
        if (RootPid(instance) is not { } root)
        {
            return [];
        }

        var tree = ProcFs.ServiceProcesses(root).ToList();
        if (!tree.Contains(root) && Directory.Exists($"/proc/{root}"))
        {
            tree.Add(root);
        }

        return tree;
    }

    /// <summary>
    /// The process that is the service itself: RabbitMQ's Erlang VM (<c>beam.smp</c>), a project's own process rather
    /// than its <c>dotnet run</c> launcher, redis-server. A SIGTERM goes to it, so that it shuts down as on a deploy.
    /// </summary>
    public int? MainPid(string instance)
    {
        if (RootPid(instance) is not { } root)
        {
            return null;
        }

        var service = ProcFs.ServiceProcesses(root);
        return service.FirstOrDefault(pid => ProcFs.CommandLine(pid).Contains("beam.smp", StringComparison.Ordinal)) is var beam and > 0
            ? beam
            : service.Count > 0 ? service[0] : root;
    }

    /// <summary>Sends <paramref name="signal"/> to each process; returns the PIDs it reached.</summary>
    public static IReadOnlyList<int> Signal(IEnumerable<int> pids, int signal) =>
        [.. pids.Where(pid => kill(pid, signal) == 0)];

    public async Task WaitStoppedAsync(string instance, TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        await WaitForInstanceAsync(instance, e => Stopped.Contains(e.Snapshot.State?.Text), deadline.Token);
    }

    /// <summary>Starts a stopped instance through the AppHost and waits until it is running and healthy again.</summary>
    public async Task StartAsync(string instance, TimeSpan timeout, CancellationToken cancellationToken)
    {
        // By id: the command on the resource would go to every replica, and a Start restarts a running one.
        var result = await app.ResourceCommands.ExecuteCommandAsync(instance, KnownResourceCommands.StartCommand, cancellationToken);
        if (!result.Success)
        {
            throw new InvalidOperationException($"starting {instance} failed: {result.Message}");
        }

        await WaitHealthyAsync(instance, timeout, cancellationToken);
    }

    public async Task WaitHealthyAsync(string instance, TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        await WaitForInstanceAsync(instance, e => e.Snapshot.HealthStatus == Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Healthy
            && e.Snapshot.State?.Text == KnownResourceStates.Running, deadline.Token);
    }

    /// <summary>The first state of <paramref name="instance"/> (an id, or a single instance's name) that matches, the current one included.</summary>
    private async Task WaitForInstanceAsync(string instance, Func<ResourceEvent, bool> predicate, CancellationToken cancellationToken)
    {
        var name = _nameOfInstance.TryGetValue(instance, out var known) ? known : instance;
        await app.ResourceNotifications.WaitForResourceAsync(name,
            e => (e.ResourceId == instance || (name == instance && Instances(name).Count == 1)) && predicate(e), cancellationToken);
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
