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

    public int PidOf(int port) => (_nodes.SingleOrDefault(n => n.Port == port)?.Process
        ?? throw new ArgumentException($"no data node on port {port}")).Pid;

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

    private async Task<ConnectionMultiplexer> ConnectSentinelAsync(int port)
    {
        var options = new ConfigurationOptions
        {
            EndPoints = { new IPEndPoint(IPAddress.Loopback, port) },
            Password = Password,
            AbortOnConnectFail = true,
            ConnectTimeout = 2000,
        };
        return await ConnectionMultiplexer.SentinelConnectAsync(options);
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

    /// <summary>Every Sentinel knows the others and the replicas, and a majority can authorize a failover (CKQUORUM).</summary>
    private async Task WaitUntilSentinelsAgreeAsync(int primaryPort, int replicas)
    {
        foreach (var sentinel in _sentinels)
        {
            await Eventually.TrueAsync(async () =>
            {
                if (sentinel.Process is { HasExited: true } exited)
                {
                    throw new InvalidOperationException($"sentinel on port {sentinel.Port} exited: {exited.OutputText}");
                }

                await using var connection = await ConnectSentinelAsync(sentinel.Port);
                var server = connection.GetServer(IPAddress.Loopback, sentinel.Port);
                var knownReplicas = await server.SentinelReplicasAsync(ServiceName);
                var knownSentinels = await server.SentinelSentinelsAsync(ServiceName);
                var quorum = (string?)await server.ExecuteAsync("SENTINEL", "CKQUORUM", ServiceName);
                return knownReplicas.Length == replicas && knownSentinels.Length == _sentinels.Count - 1
                    && quorum?.StartsWith("OK", StringComparison.Ordinal) == true;
            }, TimeSpan.FromSeconds(60), $"sentinel on port {sentinel.Port} to know {replicas} replicas and {_sentinels.Count - 1} other sentinels of the primary on {primaryPort}",
                TimeSpan.FromMilliseconds(200));
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
