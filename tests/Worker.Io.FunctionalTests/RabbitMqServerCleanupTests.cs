using EventPipeline.Testing;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// A RabbitMQ test node leaves nothing behind: no process of its own (beam.smp, erl_child_setup, inet_gethost, an
/// epmd-starter erl), no epmd on its port (ours or an <c>epmd -daemon</c> one of its VMs started) and no directory —
/// when a fixture disposes it, even paused, and when the test host that booted it as a spare is ended first (only the
/// watchdog is left to clean up; vstest SIGKILLs the host 100 ms after a run).
/// </summary>
public sealed class RabbitMqServerCleanupTests
{
    [Fact]
    public async Task A_spare_whose_owner_is_killed_leaves_no_process_epmd_or_directory()
    {
        // The owner stands in for the test host: the spare's watchdog ends the node once this process is gone.
        await using var owner = ChildProcess.Start("spare-owner", "sleep", ["600"], new Dictionary<string, string?>());
        var spare = await RabbitMqServer.StartSpareAsync(owner.Pid);
        try
        {
            var node = NodeProcesses(spare);
            await owner.KillAsync();
            await AssertNothingLeftAsync(spare, node);
        }
        finally
        {
            await spare.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_node_disposed_while_paused_leaves_no_process_epmd_or_directory()
    {
        var server = await RabbitMqServer.StartAsync();
        var node = NodeProcesses(server);
        await using (ProcessPause.Of(server.Pid))
        {
            await server.DisposeAsync();
        }

        await AssertNothingLeftAsync(server, node);
    }

    /// <summary>The node's PID, its descendants now, and its epmd.</summary>
    private static List<int> NodeProcesses(RabbitMqServer server)
    {
        var pids = new List<int> { server.EpmdPid };
        var pending = new Queue<int>([server.Pid]);
        while (pending.TryDequeue(out var pid))
        {
            pids.Add(pid);
            foreach (var child in ProcessTree.ChildrenOf(pid))
            {
                pending.Enqueue(child);
            }
        }

        return pids;
    }

    private static async Task AssertNothingLeftAsync(RabbitMqServer server, List<int> node)
    {
        string Left() =>
            string.Join("; ", node.Where(IsLive).Select(Describe)
                .Concat(LiveWithEnvironment($"ERL_EPMD_PORT={server.EpmdPort}").Select(Describe))
                .Distinct()
                .Append(Directory.Exists(server.DataDirectory) ? $"directory {server.DataDirectory}" : null)
                .OfType<string>());

        try
        {
            await Eventually.TrueAsync(() => Task.FromResult(Left().Length == 0), TimeSpan.FromSeconds(20), "the node to leave nothing behind");
        }
        catch (TimeoutException)
        {
            Assert.Fail($"left behind by node {server.NodeName} (epmd port {server.EpmdPort}): {Left()}");
        }
    }

    /// <summary>Alive: present and not a zombie (an orphan's zombie waits for init to reap it).</summary>
    private static bool IsLive(int pid) => State(pid) is { } state && state != 'Z';

    private static char? State(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[stat.LastIndexOf(')') + 2];
        }
        catch (IOException)
        {
            return null;
        }
    }

    private static string Describe(int pid)
    {
        try
        {
            return $"pid {pid} state {State(pid)} '{File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ').Trim()}'";
        }
        catch (IOException)
        {
            return $"pid {pid} (gone)";
        }
    }

    /// <summary>Live processes whose environment holds <paramref name="entry"/> (e.g. an epmd -daemon a VM of the node started).</summary>
    private static IEnumerable<int> LiveWithEnvironment(string entry) =>
        Directory.EnumerateDirectories("/proc")
            .Select(d => int.TryParse(Path.GetFileName(d), out var p) ? p : 0)
            .Where(p => p > 0 && p != Environment.ProcessId && IsLive(p) && EnvironmentOf(p).Contains(entry))
            .ToList();

    private static string[] EnvironmentOf(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/environ").Split('\0');
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return [];
        }
    }
}
