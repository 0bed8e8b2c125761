using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using RabbitMQ.Client;

namespace EventPipeline.Testing;

/// <summary>
/// Three real Debian <c>rabbitmq-server</c> nodes on loopback joined into one cluster: each with its own node name,
/// AMQP, distribution and management ports and data directory; one shared Erlang cookie and one epmd on a port of
/// its own. Node 0 boots first as the seed; the others name only it in their classic-config peer discovery, so they
/// join it on their first boot and rejoin the cluster from their own data on every restart. A node can be killed
/// (SIGKILL of its process group: the Erlang VM and erl_child_setup) and restarted on the same data directory. Every
/// process of the cluster is ended with the test process, however that ends (<see cref="NodeWatchdog"/>).
/// </summary>
public sealed class RabbitMqCluster : IAsyncDisposable
{
    private const string ServerScript = "/usr/lib/rabbitmq/bin/rabbitmq-server";
    private static readonly TimeSpan BootTimeout = TimeSpan.FromSeconds(120);
    private readonly ScratchDirectory _directory = new("ep-rabbitc");
    private readonly NodeWatchdog _watchdog;
    private readonly string _token = Guid.NewGuid().ToString("N")[..8];
    private readonly HttpClient _management = new() { Timeout = TimeSpan.FromSeconds(5) };
    private ChildProcess? _epmd;

    private RabbitMqCluster(int size)
    {
        _watchdog = new NodeWatchdog(_directory.Path);
        EpmdPort = LocalPorts.Free();
        Nodes = [.. Enumerable.Range(0, size).Select(index => new Node(index, $"ep-rc{index}-{_token}@localhost"))];
        _management.DefaultRequestHeaders.Authorization =
            new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{User}:{Password}")));
    }

    public IReadOnlyList<Node> Nodes { get; }

    public int EpmdPort { get; }

    public string User { get; } = "eventpipeline";

    public string Password { get; } = "test-" + Guid.NewGuid().ToString("N")[..16];

    /// <summary>Every node of the cluster, as the services get it: <c>amqp://user:pass@h1:p1,h2:p2,h3:p3</c>.</summary>
    public string ConnectionString =>
        $"amqp://{User}:{Password}@{string.Join(',', Nodes.Select(n => $"127.0.0.1:{n.Port}"))}";

    private string Home => Path.Combine(_directory.Path, "home");

    public static async Task<RabbitMqCluster> StartAsync(int size = 3)
    {
        var cluster = new RabbitMqCluster(size);
        try
        {
            await cluster.StartAllAsync();
            return cluster;
        }
        catch
        {
            await cluster.DisposeAsync();
            throw;
        }
    }

    private async Task StartAllAsync()
    {
        Directory.CreateDirectory(Home);
        // One cookie for every node and for rabbitmqctl: Erlang distribution refuses peers with another cookie.
        var cookie = Path.Combine(Home, ".erlang.cookie");
        File.WriteAllText(cookie, "EPCLUSTER" + _token.ToUpperInvariant());
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(cookie, UnixFileMode.UserRead); // Erlang refuses a cookie others can read
        }
        File.WriteAllText(Path.Combine(_directory.Path, "enabled_plugins"), "[rabbitmq_management].\n");

        _epmd = ChildProcess.Start("epmd", "epmd", ["-port", EpmdPort.ToString(), "-address", "127.0.0.1"],
            new Dictionary<string, string?> { [NodeWatchdog.Variable] = _directory.Path });
        await Eventually.TrueAsync(() => Task.FromResult(LocalPorts.Accepts(EpmdPort)), TimeSpan.FromSeconds(10), "epmd to listen");

        // The seed first: a blank node that finds no peer boots a cluster of its own, so the others must find it up.
        await StartNodeAsync(0);
        await Task.WhenAll(Nodes.Skip(1).Select(n => StartNodeAsync(n.Index)));
        await WaitUntilAllRunningAsync();
    }

    private async Task StartNodeAsync(int index)
    {
        var node = Nodes[index];
        var nodeDirectory = Path.Combine(_directory.Path, $"node{index}");
        Directory.CreateDirectory(nodeDirectory);
        var config = Path.Combine(nodeDirectory, "rabbitmq.conf");
        // The seed names only itself (boots at once instead of retrying absent peers); the others name the seed.
        File.WriteAllText(config, $"""
            loopback_users = none
            cluster_formation.peer_discovery_backend = classic_config
            cluster_formation.classic_config.nodes.1 = {Nodes[0].NodeName}
            """ + "\n");
        // setsid (execs in place) makes the node lead a process group of its own (the VM and erl_child_setup), killed by
        // one kill -9 (see ChildProcess.KillGroupAsync), so nothing of it is left stopped. Its port programs are in
        // sessions of their own and end by EOF once the VM is gone; the watchdog kills them too, by their mark.
        node.Process = ChildProcess.Start($"rabbitmq-{index}", "setsid", [ServerScript], new Dictionary<string, string?>
        {
            [NodeWatchdog.Variable] = _directory.Path,
            ["HOME"] = Home,
            ["RABBITMQ_NODENAME"] = node.NodeName,
            ["RABBITMQ_NODE_IP_ADDRESS"] = "127.0.0.1",
            ["RABBITMQ_NODE_PORT"] = node.Port.ToString(),
            ["RABBITMQ_DIST_PORT"] = node.DistributionPort.ToString(),
            ["ERL_EPMD_PORT"] = EpmdPort.ToString(),
            ["ERL_EPMD_ADDRESS"] = "127.0.0.1",
            // Also for the 'erl -sname epmd-starter-N' RabbitMQ runs every 60 s (it inherits the environment, not the
            // arguments below): no 'epmd -daemon' on our port that would outlive the cluster's epmd.
            ["ERL_FLAGS"] = "-start_epmd false",
            ["RABBITMQ_MNESIA_BASE"] = Path.Combine(nodeDirectory, "mnesia"),
            ["RABBITMQ_LOG_BASE"] = Path.Combine(nodeDirectory, "log"),
            ["RABBITMQ_LOGS"] = "-",
            ["RABBITMQ_CONFIG_FILE"] = config,
            ["RABBITMQ_ENABLED_PLUGINS_FILE"] = Path.Combine(_directory.Path, "enabled_plugins"),
            // The script then execs the Erlang VM: the PID we hold is the node itself, so SIGKILL really kills it.
            ["RUNNING_UNDER_SYSTEMD"] = "true",
            ["RABBITMQ_DEFAULT_USER"] = User,
            ["RABBITMQ_DEFAULT_PASS"] = Password,
            ["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] =
                $"-kernel inet_dist_use_interface {{127,0,0,1}} -rabbitmq_management tcp_config [{{port,{node.ManagementPort}}},{{ip,\"127.0.0.1\"}}]",
        });

        var process = node.Process;
        await Eventually.TrueAsync(async () =>
        {
            if (process.HasExited)
            {
                throw new InvalidOperationException($"{node.NodeName} exited: {string.Join('\n', process.Output.TakeLast(40))}");
            }

            await using var connection = await ConnectAsync(index);
            return connection.IsOpen;
        }, BootTimeout, $"{node.NodeName} to accept AMQP on port {node.Port}", TimeSpan.FromMilliseconds(500));
    }

    /// <summary>Waits until every node is up and the cluster (asked through any running node) counts all as running.</summary>
    public Task WaitUntilAllRunningAsync() =>
        Eventually.TrueAsync(async () => (await RunningNodesAsync()).Count == Nodes.Count, BootTimeout,
            $"all {Nodes.Count} nodes to run as one cluster", TimeSpan.FromMilliseconds(500));

    /// <summary>The nodes the cluster reports running, asked through the first running node's management API.</summary>
    public async Task<IReadOnlyList<string>> RunningNodesAsync()
    {
        var nodes = await ManagementGetAsync("/api/nodes?columns=name,running");
        return [.. nodes.EnumerateArray().Where(n => n.GetProperty("running").GetBoolean()).Select(n => n.GetProperty("name").GetString()!)];
    }

    /// <summary>The node that leads a quorum queue now, e.g. <c>events-io</c> (null when it has no leader).</summary>
    public async Task<Node?> QuorumLeaderAsync(string queue)
    {
        var info = await ManagementGetAsync($"/api/queues/%2F/{Uri.EscapeDataString(queue)}");
        var leader = info.TryGetProperty("leader", out var l) ? l.GetString() : null;
        return Nodes.FirstOrDefault(n => n.NodeName == leader);
    }

    /// <summary>The members a quorum queue has, by node name.</summary>
    public async Task<IReadOnlyList<string>> QuorumMembersAsync(string queue)
    {
        var info = await ManagementGetAsync($"/api/queues/%2F/{Uri.EscapeDataString(queue)}");
        return info.TryGetProperty("members", out var members)
            ? [.. members.EnumerateArray().Select(m => m.GetString()!)]
            : [];
    }

    private async Task<JsonElement> ManagementGetAsync(string path)
    {
        Exception? last = null;
        foreach (var node in Nodes.Where(n => n.IsRunning))
        {
            try
            {
                return await _management.GetFromJsonAsync<JsonElement>($"http://127.0.0.1:{node.ManagementPort}{path}");
            }
            catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException)
            {
                last = ex;
            }
        }

        throw new InvalidOperationException($"no running node answered GET {path}", last);
    }

    /// <summary>kill -9 one node's process group, its Erlang VM (epmd and the other nodes stay up, as on real hosts).</summary>
    public async Task KillAsync(int index)
    {
        if (Nodes[index].Process is { } process)
        {
            await process.KillGroupAsync();
        }
    }

    /// <summary>Starts a killed or stopped node again on its own data directory; returns once it accepts AMQP.</summary>
    public async Task RestartAsync(int index)
    {
        if (Nodes[index].Process is { } old)
        {
            await old.DisposeAsync();
        }

        await StartNodeAsync(index);
    }

    public async Task<IConnection> ConnectAsync(int index)
    {
        var factory = new ConnectionFactory
        {
            Uri = new Uri($"amqp://{User}:{Password}@127.0.0.1:{Nodes[index].Port}"),
            RequestedConnectionTimeout = TimeSpan.FromSeconds(3),
        };
        return await factory.CreateConnectionAsync();
    }

    /// <summary>Runs <c>rabbitmqctl</c> against one node (same cookie and epmd); throws with its output when it fails.</summary>
    public async Task<string> CtlAsync(int index, params string[] arguments)
    {
        await using var ctl = ChildProcess.Start("rabbitmqctl", "/usr/lib/rabbitmq/bin/rabbitmqctl", ["-n", Nodes[index].NodeName, .. arguments],
            new Dictionary<string, string?>
            {
                [NodeWatchdog.Variable] = _directory.Path,
                ["HOME"] = Home,
                ["ERL_EPMD_PORT"] = EpmdPort.ToString(),
                ["ERL_EPMD_ADDRESS"] = "127.0.0.1",
                // rabbitmqctl runs an 'erl -sname epmd-starter-N' first: no 'epmd -daemon' from it either.
                ["ERL_FLAGS"] = "-start_epmd false",
                ["RABBITMQ_LOG_BASE"] = Path.Combine(_directory.Path, $"node{index}", "log"),
            });
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await ctl.WaitForExitAsync(deadline.Token);
        if (ctl.ExitCode != 0)
        {
            throw new InvalidOperationException($"rabbitmqctl {string.Join(' ', arguments)} exited {ctl.ExitCode}: {ctl.OutputText}");
        }

        return ctl.OutputText;
    }

    public async ValueTask DisposeAsync()
    {
        // No clean shutdown needed: the data directory is deleted. The watchdog kills every process of the cluster (port
        // programs and epmd included) and deletes the directory.
        foreach (var node in Nodes)
        {
            node.Process?.KillGroupNow();
        }

        await _watchdog.DisposeAsync();
        foreach (var process in Nodes.Select(n => n.Process).Append(_epmd).OfType<ChildProcess>())
        {
            await process.DisposeAsync();
        }

        _management.Dispose();
        _directory.Dispose();
    }

    /// <summary>One node of the cluster: its ports, its name and the process now running it.</summary>
    public sealed class Node(int index, string nodeName)
    {
        public int Index { get; } = index;

        public string NodeName { get; } = nodeName;

        public int Port { get; } = LocalPorts.Free();

        public int DistributionPort { get; } = LocalPorts.Free();

        public int ManagementPort { get; } = LocalPorts.Free();

        public ChildProcess? Process { get; internal set; }

        public bool IsRunning => Process is { HasExited: false };

        public override string ToString() => $"{NodeName} (amqp {Port})";
    }
}
