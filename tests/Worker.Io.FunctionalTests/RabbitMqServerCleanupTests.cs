using EventPipeline.Testing;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// A RabbitMQ test node leaves nothing behind: no process of its own (beam.smp, erl_child_setup, inet_gethost, an
/// epmd-starter erl), no epmd on its port (ours or an <c>epmd -daemon</c> one of its VMs started) and no directory —
/// when a fixture disposes it, even paused, and when the test host that started it is kill -9'd first, a fixture's node
/// and a spare alike (only its watchdog is left to clean up; vstest SIGKILLs the host 100 ms after a run).
/// </summary>
public sealed class RabbitMqServerCleanupTests
{
    /// <summary>
    /// Both cases side by side: a node boot costs about 10 s of mostly one core, so on 2 cores the two boots take about
    /// as long as one (the class took two boots' time, one after the other, as two tests).
    /// </summary>
    [Fact]
    public async Task Nodes_leave_nothing_behind_when_disposed_paused_or_when_their_test_host_is_killed()
    {
        var both = Task.WhenAll(TheNodesOfATestHostThatIsKilledGoWithItAsync(), ANodeDisposedWhilePausedLeavesNothingAsync());
        try
        {
            await both;
        }
        catch when (both.Exception is { InnerExceptions.Count: > 1 } all)
        {
            throw all; // both failed: show both
        }
    }

    private static async Task TheNodesOfATestHostThatIsKilledGoWithItAsync()
    {
        // The owner stands in for a test host: it takes a fixture's node and starts booting the next spare, and is then
        // kill -9'd (as vstest, a CI cancel or the OOM killer ends a test host), with its fixture node paused.
        var dll = Path.Combine(ServiceProcess.RepositoryRoot, "tests", "RabbitMqNodeOwner", "bin", BuildConfiguration, "net10.0", "RabbitMqNodeOwner.dll");
        await using var owner = ChildProcess.Start("node-owner", "dotnet", [dll], new Dictionary<string, string?> { ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1" });
        var started = new List<int>();
        var directories = new List<string>();
        var epmdPid = 0;
        try
        {
            await Eventually.TrueAsync(() => owner.HasExited
                    ? throw new InvalidOperationException($"the owner exited: {owner.OutputText}")
                    : Task.FromResult(owner.Output.Contains("ready")),
                TimeSpan.FromSeconds(120), "the owner's fixture node to boot", TimeSpan.FromMilliseconds(200));
            var line = owner.Output.Single(l => l.StartsWith("node ", StringComparison.Ordinal)).Split(' ');
            var (nodePid, directory) = (int.Parse(line[1]), line[3]);
            epmdPid = int.Parse(line[2]);
            // The spare's VM too (booting behind the fixture's node): two nodes die with the owner, one of them mid-boot.
            // Counted by node directory, not by beam.smp: the VM an epmd-starter `erl` runs is a beam.smp of no node.
            await Eventually.TrueAsync(() => Task.FromResult(NodeDirectoriesUnder(owner.Pid).Append(directory).Distinct().Count() >= 2),
                TimeSpan.FromSeconds(30), "the owner's spare node to start", TimeSpan.FromMilliseconds(100));

            started = Descendants(owner.Pid);
            directories = started.SelectMany(NodeDirectories).Append(directory).Distinct().ToList();
            Assert.Contains(nodePid, started);
            Assert.Contains(epmdPid, started);
            Assert.Equal(2, directories.Count);
            await using (ProcessPause.Of(nodePid))
            {
                await owner.KillAsync();
            }

            string Left() =>
                string.Join("; ", started.Where(IsLive).Select(Describe)
                    .Concat(directories.SelectMany(d => LiveWithEnvironment(d, part: true)).Distinct().Select(Describe))
                    .Distinct()
                    .Concat(directories.Where(Directory.Exists).Select(d => $"directory {d}")));
            await AssertEventuallyNothingLeftAsync(Left, $"the killed owner's nodes (fixture node pid {nodePid} in {directory})");
        }
        finally
        {
            // Only what the owner started and is still that: a recorded PID reused since by another test's node names
            // that node's directory, not one of these, and only the owner's own epmd is taken by its PID.
            foreach (var pid in started.Where(p => IsLive(p)
                && (EnvironmentOf(p).Any(e => directories.Any(d => e.Contains(d, StringComparison.Ordinal)))
                    || (p == epmdPid && Path.GetFileName(ProcessTree.ExecutableOf(p)) == "epmd"))))
            {
                _ = kill(pid, 9);
            }
        }
    }

    private static readonly string BuildConfiguration =
        new DirectoryInfo(AppContext.BaseDirectory.TrimEnd('/')).Parent!.Name;

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int kill(int pid, int sig);

    private static List<int> Descendants(int root)
    {
        var pids = new List<int>();
        var pending = new Queue<int>(ProcessTree.ChildrenOf(root));
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

    private static IEnumerable<string> NodeDirectoriesUnder(int root) => Descendants(root).SelectMany(NodeDirectories);

    /// <summary>The node directory a process of a node names in its environment (its mnesia base's parent).</summary>
    private static IEnumerable<string> NodeDirectories(int pid) =>
        EnvironmentOf(pid).Where(e => e.StartsWith("RABBITMQ_MNESIA_BASE=", StringComparison.Ordinal))
            .Select(e => Path.GetDirectoryName(e["RABBITMQ_MNESIA_BASE=".Length..])!);

    private static async Task ANodeDisposedWhilePausedLeavesNothingAsync()
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
    private static List<int> NodeProcesses(RabbitMqServer server) => [server.EpmdPid, server.Pid, .. Descendants(server.Pid)];

    private static async Task AssertNothingLeftAsync(RabbitMqServer server, List<int> node)
    {
        string Left() =>
            string.Join("; ", node.Where(IsLive).Select(Describe)
                .Concat(LiveWithEnvironment($"ERL_EPMD_PORT={server.EpmdPort}").Select(Describe))
                .Distinct()
                .Append(Directory.Exists(server.DataDirectory) ? $"directory {server.DataDirectory}" : null)
                .OfType<string>());

        await AssertEventuallyNothingLeftAsync(Left, $"node {server.NodeName} (epmd port {server.EpmdPort})");
    }

    private static async Task AssertEventuallyNothingLeftAsync(Func<string> left, string what)
    {
        try
        {
            await Eventually.TrueAsync(() => Task.FromResult(left().Length == 0), TimeSpan.FromSeconds(20), "nothing to be left behind");
        }
        catch (TimeoutException)
        {
            Assert.Fail($"left behind by {what}: {left()}");
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

    /// <summary>
    /// Live processes whose environment holds <paramref name="entry"/> (e.g. an epmd -daemon a VM of the node started),
    /// or, with <paramref name="part"/>, an entry containing it (e.g. a node's directory: every process of that node).
    /// </summary>
    private static IEnumerable<int> LiveWithEnvironment(string entry, bool part = false) =>
        Directory.EnumerateDirectories("/proc")
            .Select(d => int.TryParse(Path.GetFileName(d), out var p) ? p : 0)
            .Where(p => p > 0 && p != Environment.ProcessId && IsLive(p)
                && EnvironmentOf(p).Any(e => part ? e.Contains(entry, StringComparison.Ordinal) : e == entry))
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
