using System.Runtime.InteropServices;
using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using EventPipeline.Bench.Observe;
using Microsoft.Extensions.DependencyInjection;

namespace EventPipeline.Bench.Chaos;

/// <summary>
/// The processes of the resources this run's AppHost started, found by the PID Aspire reports for each resource
/// (<c>executable.pid</c>) and its descendants — never by name — and their lifecycle through the AppHost: the AppHost
/// does not restart a crashed process by itself, so a killed resource is started again with Aspire's own
/// <see cref="KnownResourceCommands.StartCommand"/>, exactly what the dashboard's Start button does.
/// </summary>
public sealed class ResourceProcesses(DistributedApplication app)
{
    public const int SIGKILL = 9;
    public const int SIGTERM = 15;
    public const int SIGCONT = 18;
    public const int SIGSTOP = 19;

    private static readonly string[] Stopped = ["Exited", "Finished", "FailedToStart"];

    /// <summary>The PID Aspire started the resource as, or null while it is not running.</summary>
    public int? RootPid(string resource) =>
        app.ResourceNotifications.TryGetCurrentState(resource, out var state)
        && state.Snapshot.State?.Text == KnownResourceStates.Running
        && state.Snapshot.Properties.FirstOrDefault(p => p.Name == "executable.pid")?.Value is { } pid
        && int.TryParse(Convert.ToString(pid, System.Globalization.CultureInfo.InvariantCulture), out var value)
            ? value
            : null;

    public string State(string resource) =>
        app.ResourceNotifications.TryGetCurrentState(resource, out var state) ? state.Snapshot.State?.Text ?? "?" : "?";

    public bool IsStopped(string resource) => Stopped.Contains(State(resource));

    /// <summary>
    /// The resource's processes: the root and its descendants (a project's <c>dotnet run</c> launcher included, so a
    /// kill takes down the resource as Aspire sees it; a broker's helper processes included, so a pause freezes it all).
    /// </summary>
    public IReadOnlyList<int> Processes(string resource)
    {
        if (RootPid(resource) is not { } root)
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
    public int? MainPid(string resource)
    {
        if (RootPid(resource) is not { } root)
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

    public async Task WaitStoppedAsync(string resource, TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        await app.ResourceNotifications.WaitForResourceAsync(resource, e => Stopped.Contains(e.Snapshot.State?.Text), deadline.Token);
    }

    /// <summary>Starts a stopped resource through the AppHost and waits until it is running and healthy again.</summary>
    public async Task StartAsync(string resource, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var model = app.Services.GetRequiredService<DistributedApplicationModel>();
        var target = model.Resources.Single(r => r.Name == resource);
        var result = await app.ResourceCommands.ExecuteCommandAsync(target, KnownResourceCommands.StartCommand, cancellationToken);
        if (!result.Success)
        {
            throw new InvalidOperationException($"starting {resource} failed: {result.Message}");
        }

        await WaitHealthyAsync(resource, timeout, cancellationToken);
    }

    public async Task WaitHealthyAsync(string resource, TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        await app.ResourceNotifications.WaitForResourceHealthyAsync(resource, deadline.Token);
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
