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
        await server.BootAsync();
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
    /// killed when the test process exits, by an exit handler or, if the test host is ended first, by a watchdog.
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

                await spare.EndWatchdogAsync();
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
                (_spare, _spareBoot) = (next, next.BootAsync(background: true, owner: Environment.ProcessId));
                RegisterExitCleanup();
            }
        }

        return server;
    }

    private static int _exitCleanupRegistered;
    private static bool _sparesDisabled;

    /// <summary>
    /// Back to normal priority (nice 0) for every thread of the node, of its children and of its epmd: Linux keeps a
    /// nice value per thread. False when this process may not lower a nice value.
    /// </summary>
    private bool RaisePriority()
    {
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

    private static void RegisterExitCleanup()
    {
        if (Interlocked.Exchange(ref _exitCleanupRegistered, 1) == 0)
        {
            AppDomain.CurrentDomain.ProcessExit += (_, _) =>
            {
                RabbitMqServer? spare;
                lock (SpareGate)
                {
                    spare = _spare;
                    _spare = null;
                }

                spare?.KillNow();
            };
        }
    }

    private volatile bool _killed;

    /// <summary>
    /// kill -9 of the node's process group and of its epmd, then its directory: plain signals, nothing awaited, because
    /// vstest SIGKILLs the test host 100 ms after the run, while exit handlers run (a <c>Process.Kill(entireProcessTree)</c>
    /// cut off there left SIGSTOPped orphans; the watchdog finishes whatever this handler could not).
    /// </summary>
    private void KillNow()
    {
        _killed = true;
        _server?.KillGroupNow();
        if (_epmd is { HasExited: false })
        {
            _ = kill(_epmd.Pid, SigKill);
        }

        _directory.Dispose();
    }

    private const int SigKill = 9;

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    /// <summary>A spare as <see cref="StartOrTakeSpareAsync"/> boots it, ended by its watchdog once <paramref name="owner"/> is gone.</summary>
    internal static async Task<RabbitMqServer> StartSpareAsync(int owner)
    {
        var server = new RabbitMqServer();
        await server.BootAsync(background: true, owner);
        return server;
    }

    private async Task BootAsync(bool background = false, int owner = 0)
    {
        _epmd = background
            ? ChildProcess.Start("epmd", "nice", ["-n", "19", "epmd", "-port", EpmdPort.ToString(), "-address", "127.0.0.1"], new Dictionary<string, string?>())
            : ChildProcess.Start("epmd", "epmd", ["-port", EpmdPort.ToString(), "-address", "127.0.0.1"], new Dictionary<string, string?>());
        await Eventually.TrueAsync(() => Task.FromResult(LocalPorts.Accepts(EpmdPort)), TimeSpan.FromSeconds(10), "epmd to listen");
        if (_killed)
        {
            throw new InvalidOperationException("the test process is exiting");
        }

        await StartServerAsync(background, owner);
    }

    /// <summary>
    /// $0 the test process, $1 the node's PID (and its process group's id), $2 its epmd's PID, $3 the node name, $4 the
    /// epmd port, $5 the node's directory. The node's whole group is killed when its PID is still this node (its
    /// environment names it); a PID that is gone may have been handed to an unrelated group leader meanwhile (review of
    /// s10-hygiene, M1), so nothing is killed then. Then the directory: nobody else deletes it when the test host is
    /// ended first. SIGHUP is ignored: when the test host's process group is orphaned while one of its members is
    /// stopped, the kernel sends the whole group SIGHUP (then SIGCONT); that killed the old watchdog, while the node,
    /// which ignores SIGHUP, was resumed and lived on.
    /// </summary>
    private const string SpareWatchdogScript =
        """
        trap '' HUP
        while kill -0 "$0" 2>/dev/null; do sleep 1; done
        grep -qz "^RABBITMQ_NODENAME=$3\$" "/proc/$1/environ" 2>/dev/null && kill -9 "-$1" 2>/dev/null
        grep -qzx -- "$4" "/proc/$2/cmdline" 2>/dev/null && kill -9 "$2"
        case "$5" in */ep-rabbit-*) rm -rf -- "$5" ;; esac
        """;

    private ChildProcess? _watchdog;

    /// <summary>The node is a test's now: its fixture ends it.</summary>
    private async Task EndWatchdogAsync()
    {
        if (_watchdog is not null)
        {
            // Its PID alone: its 'sleep 1' ends by itself (a tree kill would SIGSTOP them first).
            await _watchdog.KillAsync();
            await _watchdog.DisposeAsync();
            _watchdog = null;
        }
    }

    public Task StartServerAsync() => StartServerAsync(background: false, owner: 0);

    private async Task StartServerAsync(bool background, int owner)
    {
        var home = Path.Combine(_directory.Path, "home");
        Directory.CreateDirectory(home);
        File.WriteAllText(Path.Combine(_directory.Path, "rabbitmq.conf"), "loopback_users = none\n");
        File.WriteAllText(Path.Combine(_directory.Path, "enabled_plugins"), "[rabbitmq_prometheus].\n");
        // A spare node boots at the lowest CPU priority (nice exec's the script, which exec's the VM: the PID is still the
        // node's): it then takes only CPU the running tests leave idle, and is raised to normal priority when taken.
        // setsid (execs in place, as nice does) makes the node lead a process group of its own: it is killed with all its
        // helpers (erl_child_setup, any epmd-starter erl) by one kill -9 of the group.
        _server = ChildProcess.Start("rabbitmq-server", "setsid", background ? ["nice", "-n", "19", ServerScript] : [ServerScript], new Dictionary<string, string?>
        {
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
        if (background && _epmd is not null)
        {
            // The test host is ended at once after a run, often before exit handlers finish: this watchdog then ends the
            // unused spare, kill -9 by PID after checking that each PID is still this node and this epmd.
            _watchdog = ChildProcess.Start("rabbitmq-spare-watchdog", "sh",
                ["-c", SpareWatchdogScript, owner.ToString(), _server.Pid.ToString(), _epmd.Pid.ToString(), NodeName, EpmdPort.ToString(), _directory.Path],
                new Dictionary<string, string?>());
        }

        if (_killed)
        {
            // The exit handler ran while this node was being started (it found no node to kill).
            _server.KillGroupNow();
            throw new InvalidOperationException("the test process is exiting");
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
                ["HOME"] = Path.Combine(_directory.Path, "home"),
                ["ERL_EPMD_PORT"] = EpmdPort.ToString(),
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
            // The node's whole process group: the script (while it still runs) and every helper the VM started.
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
        await EndWatchdogAsync();
        if (_server is not null)
        {
            // No clean shutdown needed: the data directory is deleted below. A clean stop of a node costs 2–7 s here,
            // paid once per fixture (as RabbitMqCluster does).
            await _server.KillGroupAsync();
            await _server.DisposeAsync();
        }

        if (_epmd is not null)
        {
            await _epmd.DisposeAsync();
        }

        _directory.Dispose();
    }
}
