using System.Globalization;
using System.Net;
using StackExchange.Redis;

namespace EventPipeline.Testing;

/// <summary>
/// Redis as it runs when one node must not be a single point of failure: one primary and two replicas
/// (<c>replicaof</c>, one password for clients and replication) and three Sentinels watching them, each a real Debian
/// <c>redis-server</c> process (a Sentinel is <c>redis-server --sentinel</c>, which is all Debian's
/// <c>redis-sentinel</c> package adds) on free loopback ports, with config files and data in one temp directory.
/// <see cref="KillPrimaryAsync"/> SIGKILLs whichever node Sentinel names primary; <see cref="WaitForNewPrimaryAsync"/>
/// waits until a majority of Sentinels promoted a replica; <see cref="RestartAsReplicaAsync"/> brings the dead node
/// back as a replica of the new primary, as an operator would.
/// </summary>
public sealed class RedisSentinelSet : IAsyncDisposable
{
    /// <summary>The name Sentinel monitors the set under: what a client's <c>serviceName=</c> says.</summary>
    public const string ServiceName = "ep-redis";

    /// <summary>Quick enough for a test, slow enough not to fail over on a busy 2-core machine's hiccup.</summary>
    public static readonly TimeSpan DownAfter = TimeSpan.FromMilliseconds(1500);

    /// <summary>
    /// How long a Sentinel distrusts its own view after it was stalled for over 2 s (TILT mode). Redis's 30 s default
    /// is sized for its 30 s <c>down-after-milliseconds</c>; at <see cref="DownAfter"/> a view is rebuilt from fresh
    /// PING replies (one a second) within about 2.5 s. At 30 s, one stall froze a Sentinel's view for 30 s: peers it had
    /// marked <c>s_down</c> just before stayed so while it was in TILT (Sentinel skips its down checks there), so its
    /// CKQUORUM failed for 30 s after each such stall, and a second stall restarts the 30 s (RedisSentinelSetTests).
    /// </summary>
    public static readonly TimeSpan TiltPeriod = TimeSpan.FromSeconds(5);

    /// <summary>The whole wait for the Sentinels to agree (all of them, not each): normally about 2.5 s.</summary>
    private static readonly TimeSpan AgreementTimeout = TimeSpan.FromSeconds(60);

    private readonly ScratchDirectory _directory = new("ep-sentinel");
    private readonly List<Node> _nodes = [];
    private readonly List<Node> _sentinels = [];

    private RedisSentinelSet()
    {
    }

    public string Password { get; } = "test-" + Guid.NewGuid().ToString("N")[..16];

    /// <summary>Ports of the data nodes (primary and replicas), in start order; the first started as primary.</summary>
    public IReadOnlyList<int> NodePorts => [.. _nodes.Select(n => n.Port)];

    public IReadOnlyList<int> SentinelPorts => [.. _sentinels.Select(n => n.Port)];

    /// <summary>
    /// What a service gets as <c>ConnectionStrings__redis</c>: the Sentinels and the service name. StackExchange.Redis
    /// asks a Sentinel for the primary, connects to it and follows <c>+switch-master</c> to a new one.
    /// </summary>
    public string ConnectionString =>
        string.Join(',', _sentinels.Select(s => $"127.0.0.1:{s.Port}")) + $",serviceName={ServiceName},password={Password}";

    public static async Task<RedisSentinelSet> StartAsync(int replicas = 2, int sentinels = 3)
    {
        var set = new RedisSentinelSet();
        try
        {
            var primary = set.StartNode(replicaOf: null);
            for (var i = 0; i < replicas; i++)
            {
                set.StartNode(replicaOf: primary.Port);
            }

            foreach (var node in set._nodes)
            {
                await set.WaitUntilAnswersAsync(node);
            }

            await set.WaitForReplicasInSyncAsync(primary.Port, replicas);
            for (var i = 0; i < sentinels; i++)
            {
                set.StartSentinel(primary.Port);
            }

            await set.WaitUntilSentinelsAgreeAsync(primary.Port, replicas);
            return set;
        }
        catch
        {
            await set.DisposeAsync();
            throw;
        }
    }

    /// <summary>The pid of the data node or Sentinel on <paramref name="port"/>.</summary>
    public int PidOf(int port) => (_nodes.Concat(_sentinels).SingleOrDefault(n => n.Port == port)?.Process
        ?? throw new ArgumentException($"no data node or sentinel on port {port}")).Pid;

    /// <summary>What the data node or Sentinel on <paramref name="port"/> logged (its latest lines).</summary>
    public IReadOnlyCollection<string> OutputOf(int port) => (_nodes.Concat(_sentinels).SingleOrDefault(n => n.Port == port)?.Process
        ?? throw new ArgumentException($"no data node or sentinel on port {port}")).Output;

    /// <summary>A connection to one Sentinel (SENTINEL commands), as the set's own probes make it.</summary>
    public async Task<ConnectionMultiplexer> ConnectSentinelAsync(int port)
    {
        var options = new ConfigurationOptions
        {
            EndPoints = { new IPEndPoint(IPAddress.Loopback, port) },
            Password = Password,
            AbortOnConnectFail = true,
            ConnectTimeout = 5000,
            // INFO (whether the Sentinel is in TILT) is an admin command to StackExchange.Redis.
            AllowAdmin = true,
        };
        return await ConnectionMultiplexer.SentinelConnectAsync(options);
    }

    /// <summary>The primary's port as the Sentinels' majority names it.</summary>
    public async Task<int?> PrimaryPortAsync()
    {
        var answers = new List<int>();
        foreach (var sentinel in _sentinels.Where(s => s.IsRunning))
        {
            try
            {
                await using var connection = await ConnectSentinelAsync(sentinel.Port);
                var address = await connection.GetServer(IPAddress.Loopback, sentinel.Port).SentinelGetMasterAddressByNameAsync(ServiceName);
                if (address is IPEndPoint ip)
                {
                    answers.Add(ip.Port);
                }
            }
            catch (RedisException)
            {
            }
        }

        var majority = answers.GroupBy(p => p).OrderByDescending(g => g.Count()).FirstOrDefault();
        return majority is not null && majority.Count() > _sentinels.Count / 2 ? majority.Key : null;
    }

    /// <summary>kill -9 the current primary (no shutdown, no last replication); returns its port.</summary>
    public async Task<int> KillPrimaryAsync()
    {
        var port = await PrimaryPortAsync() ?? throw new InvalidOperationException("the Sentinels do not agree on a primary");
        await KillNodeAsync(port);
        return port;
    }

    public async Task KillNodeAsync(int port)
    {
        var node = _nodes.Single(n => n.Port == port);
        if (node.Process is not null)
        {
            await node.Process.KillAsync();
        }
    }

    /// <summary>Waits until a majority of Sentinels names a primary other than <paramref name="oldPrimaryPort"/> and that node says it is primary.</summary>
    public async Task<int> WaitForNewPrimaryAsync(int oldPrimaryPort, TimeSpan timeout)
    {
        var port = 0;
        await Eventually.TrueAsync(async () =>
        {
            var current = await PrimaryPortAsync();
            if (current is not { } p || p == oldPrimaryPort)
            {
                return false;
            }

            await using var connection = await ConnectNodeAsync(p);
            var role = await connection.GetServer(IPAddress.Loopback, p).RoleAsync();
            port = p;
            return role is Role.Master;
        }, timeout, $"Sentinel to promote a replica after the primary on port {oldPrimaryPort} died", TimeSpan.FromMilliseconds(100));
        return port;
    }

    /// <summary>
    /// Starts a dead node again on its port and data directory, as a replica of the current primary, and waits until it
    /// is in sync (Sentinel would also turn a returning old primary into a replica; starting it as one avoids a moment
    /// in which it accepts writes).
    /// </summary>
    public async Task RestartAsReplicaAsync(int port, TimeSpan timeout)
    {
        var node = _nodes.Single(n => n.Port == port);
        if (node.IsRunning)
        {
            throw new InvalidOperationException($"the node on port {port} is running");
        }

        var primary = await PrimaryPortAsync() ?? throw new InvalidOperationException("the Sentinels do not agree on a primary");
        node.Process = StartRedis(node, replicaOf: primary);
        await WaitUntilAnswersAsync(node);
        await Eventually.TrueAsync(async () =>
        {
            await using var connection = await ConnectNodeAsync(port);
            var info = (await connection.GetServer(IPAddress.Loopback, port).InfoAsync("replication"))
                .SelectMany(g => g).ToDictionary(p => p.Key, p => p.Value);
            return info.GetValueOrDefault("role") == "slave" && info.GetValueOrDefault("master_link_status") == "up";
        }, timeout, $"the node on port {port} to be a replica in sync");
    }

    /// <summary>A direct connection to one data node (not through Sentinel), e.g. to read what a replica holds.</summary>
    public async Task<ConnectionMultiplexer> ConnectNodeAsync(int port)
    {
        var options = new ConfigurationOptions
        {
            EndPoints = { new IPEndPoint(IPAddress.Loopback, port) },
            Password = Password,
            AbortOnConnectFail = true,
            ConnectTimeout = 2000,
            AllowAdmin = true,
        };
        return await ConnectionMultiplexer.ConnectAsync(options);
    }

    /// <summary>A client connection through the Sentinels, as the services make it.</summary>
    public async Task<ConnectionMultiplexer> ConnectAsync()
    {
        var options = ConfigurationOptions.Parse(ConnectionString);
        options.AbortOnConnectFail = false;
        options.AsyncTimeout = 20_000;
        options.SyncTimeout = 20_000;
        return await ConnectionMultiplexer.ConnectAsync(options);
    }

    private Node StartNode(int? replicaOf)
    {
        var node = new Node(LocalPorts.Free(), Path.Combine(_directory.Path, $"node-{_nodes.Count}"));
        Directory.CreateDirectory(node.Directory);
        node.Process = StartRedis(node, replicaOf);
        _nodes.Add(node);
        return node;
    }

    private ChildProcess StartRedis(Node node, int? replicaOf)
    {
        List<string> arguments =
        [
            "--port", node.Port.ToString(), "--bind", "127.0.0.1", "--dir", node.Directory, "--daemonize", "no",
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--requirepass", Password, "--masterauth", Password,
        ];
        if (replicaOf is { } primary)
        {
            arguments.AddRange(["--replicaof", "127.0.0.1", primary.ToString()]);
        }

        return ChildProcess.Start($"redis-{node.Port}", "redis-server", arguments, new Dictionary<string, string?>());
    }

    private void StartSentinel(int primaryPort)
    {
        var node = new Node(LocalPorts.Free(), Path.Combine(_directory.Path, $"sentinel-{_sentinels.Count}"));
        Directory.CreateDirectory(node.Directory);
        // Sentinel rewrites its config file (the set's current state), so each gets its own writable copy.
        var config = Path.Combine(node.Directory, "sentinel.conf");
        File.WriteAllText(config, $"""
            port {node.Port}
            bind 127.0.0.1
            daemonize no
            dir {node.Directory}
            requirepass {Password}
            sentinel announce-ip 127.0.0.1
            sentinel monitor {ServiceName} 127.0.0.1 {primaryPort} 2
            sentinel auth-pass {ServiceName} {Password}
            sentinel down-after-milliseconds {ServiceName} {(int)DownAfter.TotalMilliseconds}
            sentinel failover-timeout {ServiceName} 6000
            sentinel parallel-syncs {ServiceName} 1

            """);
        node.Process = ChildProcess.Start($"sentinel-{node.Port}", "redis-server", [config, "--sentinel"], new Dictionary<string, string?>());
        _sentinels.Add(node);
    }

    private async Task WaitUntilAnswersAsync(Node node) =>
        await Eventually.TrueAsync(async () =>
        {
            if (node.Process is { HasExited: true } exited)
            {
                throw new InvalidOperationException($"redis-server on port {node.Port} exited: {exited.OutputText}");
            }

            await using var connection = await ConnectNodeAsync(node.Port);
            return await connection.GetDatabase().PingAsync() >= TimeSpan.Zero;
        }, TimeSpan.FromSeconds(30), $"redis-server on port {node.Port} to answer PING");

    private async Task WaitForReplicasInSyncAsync(int primaryPort, int replicas) =>
        await Eventually.TrueAsync(async () =>
        {
            await using var connection = await ConnectNodeAsync(primaryPort);
            var info = (await connection.GetServer(IPAddress.Loopback, primaryPort).InfoAsync("replication")).SelectMany(g => g).ToList();
            return info.Count(p => p.Key.StartsWith("slave", StringComparison.Ordinal) && p.Value.Contains("state=online")) == replicas;
        }, TimeSpan.FromSeconds(30), $"{replicas} replicas to be in sync with the primary on port {primaryPort}");

    /// <summary>
    /// Every Sentinel knows the others and the replicas, and a majority can authorize a failover (CKQUORUM); each is
    /// first given <see cref="TiltPeriod"/> (a runtime-only setting, <c>SENTINEL DEBUG</c>, so it is set as soon as the
    /// Sentinel answers: a TILT already entered is measured against the new period). One deadline for all of them, one
    /// connection per Sentinel for the whole wait (a new connection per probe, 2 s to connect, was itself a way to fail
    /// on a busy machine). On timeout the message says, per Sentinel, which condition failed with what it last
    /// answered, whether it is in TILT, and its last log lines.
    /// </summary>
    private async Task WaitUntilSentinelsAgreeAsync(int primaryPort, int replicas)
    {
        var connections = new Dictionary<int, ConnectionMultiplexer>();
        var tiltPeriodSet = new HashSet<int>();
        var agreed = new HashSet<int>();
        var lastView = new Dictionary<int, SentinelView>();
        var lastError = new Dictionary<int, string>();
        var watch = System.Diagnostics.Stopwatch.StartNew();
        string Last(int port) => (lastView.TryGetValue(port, out var view) ? view.Explain(replicas, _sentinels.Count - 1) : $"sentinel {port}: never answered")
            + (lastError.TryGetValue(port, out var error) ? $"; the probe after that failed: {error}" : "");
        try
        {
            while (agreed.Count < _sentinels.Count)
            {
                foreach (var sentinel in _sentinels.Where(s => !agreed.Contains(s.Port)))
                {
                    if (sentinel.Process is { HasExited: true } exited)
                    {
                        throw new InvalidOperationException($"sentinel on port {sentinel.Port} exited: {exited.OutputText}");
                    }

                    try
                    {
                        if (!connections.TryGetValue(sentinel.Port, out var connection))
                        {
                            connection = connections[sentinel.Port] = await ConnectSentinelAsync(sentinel.Port);
                        }

                        var server = connection.GetServer(IPAddress.Loopback, sentinel.Port);
                        if (tiltPeriodSet.Add(sentinel.Port))
                        {
                            await server.ExecuteAsync("SENTINEL", "DEBUG", "tilt-period", ((int)TiltPeriod.TotalMilliseconds).ToString(CultureInfo.InvariantCulture));
                        }

                        var view = await ObserveSentinelAsync(server, sentinel.Port);
                        lastView[sentinel.Port] = view;
                        lastError.Remove(sentinel.Port);
                        if (view.Agrees(replicas, _sentinels.Count - 1))
                        {
                            agreed.Add(sentinel.Port);
                        }
                    }
                    catch (Exception ex) when (ex is RedisException or TimeoutException)
                    {
                        tiltPeriodSet.Remove(sentinel.Port);
                        if (connections.Remove(sentinel.Port, out var broken))
                        {
                            await broken.DisposeAsync();
                        }

                        lastError[sentinel.Port] = $"{ex.GetType().Name}: {ex.Message}";
                    }
                }

                if (agreed.Count == _sentinels.Count)
                {
                    break;
                }

                if (watch.Elapsed > AgreementTimeout)
                {
                    var pending = _sentinels.Where(s => !agreed.Contains(s.Port)).ToList();
                    var logs = string.Join("\n", pending.Select(s =>
                        $"--- sentinel {s.Port} (pid {s.Process?.Pid}) last log lines:\n{string.Join('\n', s.Process?.Output.TakeLast(30) ?? [])}"));
                    throw new TimeoutException(
                        $"Timed out after {AgreementTimeout} waiting for the sentinels on ports {string.Join(", ", pending.Select(s => s.Port))} "
                        + $"to know {replicas} replicas and {_sentinels.Count - 1} other sentinels of the primary on {primaryPort} and to answer CKQUORUM OK "
                        + $"({agreed.Count} of {_sentinels.Count} did); last answers:\n{string.Join('\n', pending.Select(s => Last(s.Port)))}\n{logs}");
                }

                await Task.Delay(200);
            }
        }
        finally
        {
            foreach (var connection in connections.Values)
            {
                await connection.DisposeAsync();
            }
        }
    }

    private static async Task<SentinelView> ObserveSentinelAsync(IServer server, int port)
    {
        var knownReplicas = await server.SentinelReplicasAsync(ServiceName);
        var knownSentinels = await server.SentinelSentinelsAsync(ServiceName);
        string quorum;
        try
        {
            quorum = (string?)await server.ExecuteAsync("SENTINEL", "CKQUORUM", ServiceName) ?? "(nil)";
        }
        catch (RedisServerException refused)
        {
            // NOQUORUM / NOAUTH come back as errors: their text says how many Sentinels are usable.
            quorum = refused.Message;
        }

        // TILT: the Sentinel saw its own clock jump (it was stalled over 2 s) and skips its down checks for TiltPeriod.
        var info = (await server.InfoAsync("sentinel")).SelectMany(g => g).ToDictionary(p => p.Key, p => p.Value);
        var tilt = info.GetValueOrDefault("sentinel_tilt") == "1" ? $"in TILT for {info.GetValueOrDefault("sentinel_tilt_since_seconds")} s" : "not in TILT";
        return new SentinelView(port, [.. knownReplicas.Select(Describe)], [.. knownSentinels.Select(Describe)], quorum, tilt);
    }

    private static string Describe(KeyValuePair<string, string>[] instance)
    {
        var fields = instance.ToDictionary(p => p.Key, p => p.Value);
        var hello = fields.TryGetValue("last-hello-message", out var ms) ? $" last-hello={ms}ms" : "";
        return $"{fields.GetValueOrDefault("ip")}:{fields.GetValueOrDefault("port")} flags={fields.GetValueOrDefault("flags")} "
            + $"runid={fields.GetValueOrDefault("runid")} last-ok-ping={fields.GetValueOrDefault("last-ok-ping-reply")}ms{hello} "
            + $"link-pending={fields.GetValueOrDefault("link-pending-commands")}";
    }

    /// <summary>What one Sentinel said in one probe.</summary>
    private sealed record SentinelView(int Port, IReadOnlyList<string> Replicas, IReadOnlyList<string> Sentinels, string Quorum, string Tilt)
    {
        public bool Agrees(int replicas, int otherSentinels) => Failures(replicas, otherSentinels).Count == 0;

        /// <summary>Which of the three conditions fail, then everything it answered.</summary>
        public string Explain(int replicas, int otherSentinels) =>
            $"sentinel {Port} ({Tilt}) fails: {string.Join(", ", Failures(replicas, otherSentinels))}; "
            + $"{Replicas.Count} replicas [{string.Join("; ", Replicas)}], {Sentinels.Count} sentinels [{string.Join("; ", Sentinels)}], CKQUORUM: {Quorum}";

        private List<string> Failures(int replicas, int otherSentinels)
        {
            var failures = new List<string>();
            if (Replicas.Count != replicas)
            {
                failures.Add($"knows {Replicas.Count} replicas, not {replicas}");
            }

            if (Sentinels.Count != otherSentinels)
            {
                failures.Add($"knows {Sentinels.Count} other sentinels, not {otherSentinels}");
            }

            if (!Quorum.StartsWith("OK", StringComparison.Ordinal))
            {
                failures.Add("CKQUORUM not OK");
            }

            return failures;
        }
    }

    public async ValueTask DisposeAsync()
    {
        // Sentinels first, so that they do not fail over while the data nodes go down.
        foreach (var node in _sentinels.Concat(_nodes))
        {
            if (node.Process is not null)
            {
                await node.Process.KillAsync();
                await node.Process.DisposeAsync();
            }
        }

        _directory.Dispose();
    }

    private sealed class Node(int port, string directory)
    {
        public int Port { get; } = port;

        public string Directory { get; } = directory;

        public ChildProcess? Process { get; set; }

        public bool IsRunning => Process is { HasExited: false };
    }
}
