using System.Diagnostics;
using System.Globalization;
using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using EventPipeline.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace EventPipeline.EndToEnd.Tests;

/// <summary>
/// A worker that dies is started again by the AppHost and the dashboard shows the restart count; one stopped from the
/// dashboard stays stopped; a Start sent by someone else meanwhile (as the bench's chaos mode does) is not doubled.
/// </summary>
[Collection(AppHostCollection.Name)]
public sealed class CrashRestartTests(AppHostFixture fixture)
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(90);

    private ResourceNotificationService Notifications => fixture.App.ResourceNotifications;

    private async Task<ResourceEvent> WaitForAsync(string resource, Func<ResourceEvent, bool> done)
    {
        using var timeout = new CancellationTokenSource(Deadline);
        return await Notifications.WaitForResourceAsync(resource, done, timeout.Token);
    }

    private static int? Pid(ResourceEvent e) =>
        e.Snapshot.Properties.FirstOrDefault(p => p.Name == "executable.pid")?.Value is { } value
        && int.TryParse(Convert.ToString(value, CultureInfo.InvariantCulture), out var pid) ? pid : null;

    private static int Restarts(ResourceEvent e) =>
        e.Snapshot.Properties.FirstOrDefault(p => p.Name == CrashRestarts.RestartsProperty)?.Value is { } value
        && int.TryParse(Convert.ToString(value, CultureInfo.InvariantCulture), out var n) ? n : 0;

    private async Task<ResourceEvent> WaitForRunningAsync(string resource) =>
        await WaitForAsync(resource, e => e.Snapshot.State?.Text == KnownResourceStates.Running && Pid(e) is not null);

    /// <summary>
    /// SIGKILLs the worker's own process: the crash nobody asked for. Aspire runs a project as <c>dotnet run</c> (the
    /// resource's pid); the worker is that process's child, and its death ends <c>dotnet run</c> with its exit code.
    /// </summary>
    private static void Kill(int runPid, string executable)
    {
        var worker = ProcessTree.ChildRunning(runPid, executable);
        Assert.True(worker != 0, $"no {executable} process under pid {runPid}");
        using var process = Process.GetProcessById(worker);
        process.Kill();
    }

    [Fact]
    public async Task Worker_killed_by_pid_is_started_again_and_shows_its_restart_count()
    {
        var before = await WaitForRunningAsync("worker-cpu");
        var pid = Pid(before)!.Value;
        var restarts = Restarts(before);

        Kill(pid, "Worker.Cpu");

        var after = await WaitForAsync("worker-cpu", e => e.Snapshot.State?.Text == KnownResourceStates.Running && Pid(e) is { } p && p != pid);
        Assert.True(Restarts(after) > restarts, $"restarts property {Restarts(after)}, was {restarts}");
        using var healthy = new CancellationTokenSource(Deadline);
        await Notifications.WaitForResourceHealthyAsync("worker-cpu", healthy.Token);
    }

    [Fact]
    public async Task Worker_stopped_from_the_dashboard_stays_stopped_until_started_again()
    {
        await WaitForRunningAsync("worker-io");
        using var timeout = new CancellationTokenSource(Deadline);
        // An operator stops a worker that is up: "Running" comes as soon as the process starts (an earlier test may
        // just have restarted it), and a process stopped in its first moments can outlast the orchestrator's stop
        // window (a CI run: "timed out waiting for process to stop" 160 ms after its bus started).
        await Notifications.WaitForResourceHealthyAsync("worker-io", timeout.Token);
        var stop = await fixture.App.ResourceCommands.ExecuteCommandAsync("worker-io", KnownResourceCommands.StopCommand, timeout.Token);
        Assert.True(stop.Success, stop.Message);

        try
        {
            await WaitForAsync("worker-io", e => e.Snapshot.State?.Text is "Exited" or "Finished");
            // The restarter says what it decided; wait for that line rather than for time to pass.
            var log = await Eventually.ReturnsAsync(
                () => ResourceLogAsync("worker-io"),
                lines => lines.Any(l => l.Contains("stopped on purpose", StringComparison.Ordinal)),
                Deadline,
                "the restarter's decision about worker-io");
            // It ended by itself, not killed at the end of the orchestrator's stop window (exit code -1): a worker whose
            // exporter waited out its 10 s timeout on the last flush was killed, and the stop was reported failed.
            var decision = log.Last(l => l.Contains("stopped on purpose", StringComparison.Ordinal));
            Assert.Contains("(exit code 0)", decision);
            Assert.True(Notifications.TryGetCurrentState("worker-io", out var now));
            Assert.NotEqual(KnownResourceStates.Running, now.Snapshot.State?.Text);
            Assert.NotEqual(KnownResourceStates.Starting, now.Snapshot.State?.Text);
        }
        finally
        {
            var start = await fixture.App.ResourceCommands.ExecuteCommandAsync("worker-io", KnownResourceCommands.StartCommand, timeout.Token);
            Assert.True(start.Success, start.Message);
            await Notifications.WaitForResourceHealthyAsync("worker-io", timeout.Token);
        }
    }

    [Fact]
    public async Task Worker_killed_and_started_by_someone_else_is_not_started_a_second_time()
    {
        var before = await WaitForRunningAsync("worker-cpu");
        var pid = Pid(before)!.Value;

        Kill(pid, "Worker.Cpu");
        await WaitForAsync("worker-cpu", e => e.Snapshot.State?.Text is "Exited" or "Finished");
        // What the bench's chaos mode does: Start at once, before the restarter's back-off ends.
        using var timeout = new CancellationTokenSource(Deadline);
        var start = await fixture.App.ResourceCommands.ExecuteCommandAsync("worker-cpu", KnownResourceCommands.StartCommand, timeout.Token);
        Assert.True(start.Success, start.Message);
        var running = await WaitForAsync("worker-cpu", e => e.Snapshot.State?.Text == KnownResourceStates.Running && Pid(e) is { } p && p != pid);
        var restartedPid = Pid(running)!.Value;

        // The orchestrator can show the resource Finished for seconds after that Start began (a loaded CI machine:
        // 1.85 s, longer than the restarter's 1 s back-off), so the restarter must go by the Start, not by the state.
        var log = await Eventually.ReturnsAsync(
            () => ResourceLogAsync("worker-cpu"),
            lines => lines.Any(l => l.Contains("not starting it again", StringComparison.Ordinal)),
            Deadline,
            "the restarter seeing worker-cpu started already");
        var sinceCrash = log.Skip(log.FindLastIndex(l => l.Contains("starting it again in", StringComparison.Ordinal)));
        Assert.Single(sinceCrash, l => l.Contains("Executing command 'start'", StringComparison.Ordinal));
        Assert.True(Notifications.TryGetCurrentState("worker-cpu", out var now));
        Assert.Equal(restartedPid, Pid(now));
        await Notifications.WaitForResourceHealthyAsync("worker-cpu", timeout.Token);
    }

    /// <summary>The resource's console log as the dashboard shows it, the AppHost's own lines about it included.</summary>
    private async Task<List<string>> ResourceLogAsync(string name)
    {
        var resource = fixture.App.Services.GetRequiredService<DistributedApplicationModel>().Resources.Single(r => r.Name == name);
        var lines = new List<string>();
        await foreach (var batch in fixture.App.Services.GetRequiredService<ResourceLoggerService>().GetAllAsync(resource))
        {
            lines.AddRange(batch.Select(l => l.Content));
        }

        return lines;
    }
}
