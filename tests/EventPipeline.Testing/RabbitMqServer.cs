using System.Runtime.InteropServices;
using RabbitMQ.Client;

namespace EventPipeline.Testing;

/// <summary>
/// A real Debian <c>rabbitmq-server</c> (with its own epmd) on free loopback ports, in a temp directory, with a
/// stable node name so that a restart on the same data directory keeps its queues.
/// </summary>
public sealed class RabbitMqServer : IAsyncDisposable
{
    private const string ServerScript = "/usr/lib/rabbitmq/bin/rabbitmq-server";
    private readonly ScratchDirectory _directory = new("ep-rabbit");
    private readonly NodeWatchdog _watchdog;
    private ChildProcess? _epmd;
    private ChildProcess? _server;

    /// <summary>The last lines the running node printed (its log goes to stdout): what a failing test shows of the broker.</summary>
    public IEnumerable<string> LastLogLines(int count) => _server?.Output.TakeLast(count) ?? [];

    private RabbitMqServer()
    {
        Port = LocalPorts.Free();
        DistributionPort = LocalPorts.Free();
        EpmdPort = LocalPorts.Free();
        PrometheusPort = LocalPorts.Free();
        // Before any process of the node: whatever this node starts is ended with the test process.
        _watchdog = new NodeWatchdog(_directory.Path);
    }

    public int Port { get; }

    public int DistributionPort { get; }

    public int EpmdPort { get; }

    public int PrometheusPort { get; }

    public string User { get; } = "eventpipeline";

    public string Password { get; } = "test-" + Guid.NewGuid().ToString("N")[..16];

    public string ConnectionString => $"amqp://{User}:{Password}@127.0.0.1:{Port}";

    public string NodeName => $"ep-test-{Port}@localhost";

    public bool IsRunning => _server is { HasExited: false };

    /// <summary>The node's PID (the script execs the VM), which also leads the node's own process group.</summary>
    public int Pid => _server?.Pid ?? throw new InvalidOperationException("rabbitmq-server is not running");

    /// <summary>The PID of this node's own epmd.</summary>
    public int EpmdPid => _epmd?.Pid ?? throw new InvalidOperationException("epmd is not running");

    /// <summary>The node's temp directory (data, logs, HOME), deleted when the node is disposed.</summary>
    public string DataDirectory => _directory.Path;

    public static async Task<RabbitMqServer> StartAsync()
    {
        var server = new RabbitMqServer();
        try
        {
            await server.BootAsync();
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }

        return server;
    }

    private static readonly object SpareGate = new();
    private static RabbitMqServer? _spare;
    private static Task? _spareBoot;

    /// <summary>
    /// A fresh node, exactly as <see cref="StartAsync"/> gives (its own ports, data directory, epmd, nothing declared),
    /// but booted in the background while the previous caller's tests ran; the next one starts booting as this one is
    /// handed out. A node boot costs 5–20 s of a 2-core machine, and an assembly whose fixtures each need fresh brokers
    /// would otherwise wait for one boot per fixture. The spare boots at nice 19, so it takes only CPU the running tests
    /// leave idle (at normal priority it made an I/O dead-letter test fail: a pre-existing race of the API's error-queue
    /// scans that any concurrent CPU load exposes), and is raised to normal priority when handed out. An unused spare is
    /// ended with the test process by its watchdog, as every node is.
    /// </summary>
    public static async Task<RabbitMqServer> StartOrTakeSpareAsync()
    {
        RabbitMqServer? spare;
        Task? boot;
        lock (SpareGate)
        {
            (spare, boot) = (_spare, _spareBoot);
            (_spare, _spareBoot) = (null, null);
        }

        RabbitMqServer server;
        if (spare is null || boot is null)
        {
            server = await StartAsync();
        }
        else
        {
            try
            {
                await boot;
                if (!spare.RaisePriority())
                {
                    // Not allowed to raise a priority here (not root): a node left at nice 19 would starve under load,
                    // so no more spares; this one is not used either.
                    _sparesDisabled = true;
                    await spare.DisposeAsync();
                    spare = await StartAsync();
                }

                server = spare;
            }
            catch (Exception ex) when (ex is InvalidOperationException or TimeoutException)
            {
                // A spare that did not come up is not this caller's fault: boot one in the open, where its error shows.
                await spare.DisposeAsync();
                server = await StartAsync();
            }
        }

        lock (SpareGate)
        {
            if (_spare is null && !_sparesDisabled)
            {
                var next = new RabbitMqServer();
                (_spare, _spareBoot) = (next, next.BootAsync(background: true));
            }
        }

        return server;
    }

    private static bool _sparesDisabled;

    /// <summary>
    /// Back to normal priority (nice 0) for every thread of the node, of its children and of its epmd: Linux keeps a
    /// nice value per thread. False when this process may not lower a nice value.
    /// </summary>
    private bool RaisePriority()
    {
        if (_server is { } server && !SetAutogroupNice(server.Pid, 0))
        {
            return false;
        }

        var pids = new List<int>();
        foreach (var root in new[] { _server, _epmd }.OfType<ChildProcess>())
        {
            pids.Add(root.Pid);
            pids.AddRange(ProcessTree.ChildrenOf(root.Pid));
        }

        foreach (var pid in pids)
        {
            IEnumerable<string> threads;
            try
            {
                threads = Directory.EnumerateDirectories($"/proc/{pid}/task").ToList();
            }
            catch (IOException)
            {
                continue; // exited meanwhile
            }

            foreach (var thread in threads)
            {
                if (int.TryParse(System.IO.Path.GetFileName(thread), out var tid) && setpriority(PrioProcess, tid, 0) != 0
                    && Marshal.GetLastPInvokeError() is EPERM or EACCES)
                {
                    return false;
                }
            }
        }

        return true;
    }

    private const int PrioProcess = 0;
    private const int EPERM = 1;
    private const int EACCES = 13;

    [DllImport("libc", SetLastError = true)]
    private static extern int setpriority(int which, int who, int prio);

    private async Task BootAsync(bool background = false)
    {
        var marked = new Dictionary<string, string?> { [NodeWatchdog.Variable] = _directory.Path };
        _epmd = background
            ? ChildProcess.Start("epmd", "nice", ["-n", "19", "epmd", "-port", EpmdPort.ToString(), "-address", "127.0.0.1"], marked)
            : ChildProcess.Start("epmd", "epmd", ["-port", EpmdPort.ToString(), "-address", "127.0.0.1"], marked);
        await Eventually.TrueAsync(() => Task.FromResult(LocalPorts.Accepts(EpmdPort)), TimeSpan.FromSeconds(10), "epmd to listen");
        await StartServerAsync(background);
    }

    public Task StartServerAsync() => StartServerAsync(background: false);

    /// <summary>
    /// Sets the nice value of the scheduling group (autogroup) of <paramref name="pid"/>'s session. True where there is
    /// no autogroup (disabled, or the node already gone); false when this process may not set that value.
    /// </summary>
    private static bool SetAutogroupNice(int pid, int nice)
    {
        try
        {
            File.WriteAllText($"/proc/{pid}/autogroup", nice.ToString(System.Globalization.CultureInfo.InvariantCulture));
            return true;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
        catch (IOException)
        {
            return true; // no autogroup support, or the process exited meanwhile
        }
    }

    private async Task StartServerAsync(bool background)
    {
        var home = Path.Combine(_directory.Path, "home");
        Directory.CreateDirectory(home);
        File.WriteAllText(Path.Combine(_directory.Path, "rabbitmq.conf"), "loopback_users = none\n");
        File.WriteAllText(Path.Combine(_directory.Path, "enabled_plugins"), "[rabbitmq_prometheus].\n");
        // A spare node boots at the lowest CPU priority (nice exec's the script, which exec's the VM: the PID is still the
        // node's): it then takes only CPU the running tests leave idle, and is raised to normal priority when taken.
        // setsid (execs in place, as nice does) makes the node lead a process group of its own, which holds the VM and
        // erl_child_setup: one kill -9 of the group ends both. The port programs (inet_gethost, the disk monitor's sh, the
        // 'erl -sname epmd-starter-N' RabbitMQ runs) are not in it: erl_child_setup puts each in a session of its own.
        // They end by themselves once the VM is gone (EOF on their port), and the watchdog kills them by their mark.
        _server = ChildProcess.Start("rabbitmq-server", "setsid", background ? ["nice", "-n", "19", ServerScript] : [ServerScript], new Dictionary<string, string?>
        {
            [NodeWatchdog.Variable] = _directory.Path,
            ["HOME"] = home,
            ["RABBITMQ_NODENAME"] = NodeName,
            ["RABBITMQ_NODE_IP_ADDRESS"] = "127.0.0.1",
            ["RABBITMQ_NODE_PORT"] = Port.ToString(),
            ["RABBITMQ_DIST_PORT"] = DistributionPort.ToString(),
            ["ERL_EPMD_PORT"] = EpmdPort.ToString(),
            ["ERL_EPMD_ADDRESS"] = "127.0.0.1",
            // Never start an 'epmd -daemon' (cwd /, in a session of its own: nothing of ours ends it): this node has its
            // own epmd. Without this the VM, and any 'erl -sname epmd-starter-N' RabbitMQ runs to make sure an epmd is up
            // (it inherits this environment, not the VM's arguments), start one on ERL_EPMD_PORT whenever that port is
            // free, e.g. once our epmd is gone while the node still runs; that one outlives everything.
            ["ERL_FLAGS"] = "-start_epmd false",
            ["RABBITMQ_MNESIA_BASE"] = Path.Combine(_directory.Path, "mnesia"),
            ["RABBITMQ_LOG_BASE"] = Path.Combine(_directory.Path, "log"),
            ["RABBITMQ_LOGS"] = "-",
            ["RABBITMQ_CONFIG_FILE"] = Path.Combine(_directory.Path, "rabbitmq.conf"),
            ["RABBITMQ_ENABLED_PLUGINS_FILE"] = Path.Combine(_directory.Path, "enabled_plugins"),
            // Makes the script exec the Erlang VM instead of running it as a child: the PID we hold is then the broker
            // itself, so kill -9 really kills it (otherwise beam.smp lives on, orphaned, and holds our output pipes).
            ["RUNNING_UNDER_SYSTEMD"] = "true",
            ["RABBITMQ_DEFAULT_USER"] = User,
            ["RABBITMQ_DEFAULT_PASS"] = Password,
            ["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] =
                $"-kernel inet_dist_use_interface {{127,0,0,1}} -rabbitmq_prometheus tcp_config [{{port,{PrometheusPort}}},{{ip,\"127.0.0.1\"}}]",
        });

        if (background)
        {
            // setsid puts the node in a session of its own, and with sched_autogroup_enabled=1 (Debian's default) each
            // session is a scheduling group: nice 19 then ranks the node only against its own threads, and the spare
            // took as much CPU as the whole test run (review of s11-hygiene2, M1). The group's own nice puts it back.
            SetAutogroupNice(_server.Pid, 19);
        }

        await Eventually.TrueAsync(async () =>
        {
            if (_server.HasExited)
            {
                throw new InvalidOperationException($"rabbitmq-server exited: {string.Join('\n', _server.Output.TakeLast(40))}");
            }

            await using var connection = await ConnectAsync();
            return connection.IsOpen;
        }, TimeSpan.FromSeconds(90), $"rabbitmq-server on port {Port} to accept AMQP", TimeSpan.FromMilliseconds(500));
    }

    /// <summary>
    /// Runs <c>rabbitmqctl</c> against this node (same Erlang cookie and epmd), e.g. to set a policy; throws with its
    /// output when it fails.
    /// </summary>
    public async Task<string> CtlAsync(params string[] arguments)
    {
        await using var ctl = ChildProcess.Start("rabbitmqctl", "/usr/lib/rabbitmq/bin/rabbitmqctl", ["-n", NodeName, .. arguments],
            new Dictionary<string, string?>
            {
                [NodeWatchdog.Variable] = _directory.Path,
                ["HOME"] = Path.Combine(_directory.Path, "home"),
                ["ERL_EPMD_PORT"] = EpmdPort.ToString(),
                ["ERL_EPMD_ADDRESS"] = "127.0.0.1",
                // rabbitmqctl, too, runs an 'erl -sname epmd-starter-N' first, whose erlexec would start an 'epmd -daemon'
                // on our port if our epmd were gone (see the node's ERL_FLAGS).
                ["ERL_FLAGS"] = "-start_epmd false",
                ["RABBITMQ_LOG_BASE"] = Path.Combine(_directory.Path, "log"),
            });
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await ctl.WaitForExitAsync(deadline.Token);
        if (ctl.ExitCode != 0)
        {
            throw new InvalidOperationException($"rabbitmqctl {string.Join(' ', arguments)} exited {ctl.ExitCode}: {ctl.OutputText}");
        }

        return ctl.OutputText;
    }

    /// <summary>kill -9 the broker node (epmd stays up, as it would on a real host).</summary>
    public async Task KillAsync()
    {
        if (_server is not null)
        {
            // The node's process group: the VM and erl_child_setup (its port programs end once the VM is gone).
            await _server.KillGroupAsync();
        }
    }

    /// <summary>SIGTERM: the node shuts down cleanly, writing everything it holds (a planned restart).</summary>
    public async Task StopAsync()
    {
        if (_server is not null)
        {
            await _server.TerminateAsync(TimeSpan.FromSeconds(90));
        }
    }

    public async Task<IConnection> ConnectAsync()
    {
        var factory = new ConnectionFactory { Uri = new Uri(ConnectionString), RequestedConnectionTimeout = TimeSpan.FromSeconds(3) };
        return await factory.CreateConnectionAsync();
    }

    /// <summary>Ready messages in a queue (AMQP passive declare), or null when the queue does not exist.</summary>
    public async Task<uint?> MessageCountAsync(string queue)
    {
        await using var connection = await ConnectAsync();
        await using var channel = await connection.CreateChannelAsync();
        try
        {
            return (await channel.QueueDeclarePassiveAsync(queue)).MessageCount;
        }
        catch (RabbitMQ.Client.Exceptions.OperationInterruptedException)
        {
            return null;
        }
    }

    public async ValueTask DisposeAsync()
    {
        // No clean shutdown needed: the data directory is deleted. A clean stop of a node costs 2–7 s here, paid once per
        // fixture (as RabbitMqCluster does). The watchdog kills every process of this node (port programs, epmd and a
        // paused VM included) and deletes the directory; waiting on the VM alone would also wait for every port program
        // that still holds its output pipe.
        _server?.KillGroupNow();
        await _watchdog.DisposeAsync();
        foreach (var process in new[] { _server, _epmd }.OfType<ChildProcess>())
        {
            await process.DisposeAsync();
        }

        _directory.Dispose();
    }
}
