using System.Net;
using StackExchange.Redis;

namespace EventPipeline.Testing;

/// <summary>
/// A primary, one replica of it and one <c>redis-server --sentinel</c> watching them, each a real redis-server on a free
/// loopback port: the smallest set in which a client that goes through Sentinel discovery (<c>serviceName=</c>) is told
/// of a replica beside the primary. The Sentinel never fails over (its quorum, 2, is more than the one Sentinel there
/// is), so once <see cref="Primary"/> is killed it keeps naming an address where nothing listens while the replica
/// answers — what a client meets when the primary dies and the Sentinels have not promoted a replica yet.
/// </summary>
public sealed class LoneSentinelWithReplica : IAsyncDisposable
{
    private readonly ScratchDirectory _directory = new("ep-lone-sentinel-replica");
    private ChildProcess? _replica;
    private ChildProcess? _sentinel;

    private LoneSentinelWithReplica(RedisServer primary, string serviceName) => (Primary, ServiceName) = (primary, serviceName);

    public string ServiceName { get; }

    /// <summary>The primary the Sentinel names (kill it with <see cref="RedisServer.KillAsync"/>, start it again with <see cref="RedisServer.StartProcessAsync"/>).</summary>
    public RedisServer Primary { get; }

    public int ReplicaPort { get; private set; }

    public int SentinelPort { get; private set; }

    public string ConnectionString => $"127.0.0.1:{SentinelPort},serviceName={ServiceName},password={Primary.Password}";

    public static async Task<LoneSentinelWithReplica> StartAsync(string serviceName)
    {
        var set = new LoneSentinelWithReplica(await RedisServer.StartAsync(), serviceName);
        try
        {
            set.ReplicaPort = LocalPorts.Free();
            var replicaDirectory = Directory.CreateDirectory(Path.Combine(set._directory.Path, "replica")).FullName;
            set._replica = ChildProcess.Start($"redis-replica-{set.ReplicaPort}", "redis-server",
                ["--port", set.ReplicaPort.ToString(), "--bind", "127.0.0.1", "--dir", replicaDirectory, "--daemonize", "no",
                 "--save", "", "--requirepass", set.Primary.Password, "--masterauth", set.Primary.Password,
                 "--replicaof", "127.0.0.1", set.Primary.Port.ToString()],
                new Dictionary<string, string?>());
            await Eventually.TrueAsync(async () =>
            {
                ThrowIfExited(set._replica, "the replica");
                var info = await ReplicationAsync(set.ReplicaPort, set.Primary.Password);
                return info.GetValueOrDefault("master_link_status") == "up";
            }, TimeSpan.FromSeconds(30), $"the replica on port {set.ReplicaPort} to be in sync with the primary on {set.Primary.Port}", TimeSpan.FromMilliseconds(100));

            set.SentinelPort = LocalPorts.Free();
            var sentinelDirectory = Directory.CreateDirectory(Path.Combine(set._directory.Path, "sentinel")).FullName;
            // Sentinel rewrites its config file, so it gets its own writable copy.
            var config = Path.Combine(sentinelDirectory, "sentinel.conf");
            File.WriteAllText(config, $"""
                port {set.SentinelPort}
                bind 127.0.0.1
                daemonize no
                dir {sentinelDirectory}
                requirepass {set.Primary.Password}
                sentinel announce-ip 127.0.0.1
                sentinel monitor {serviceName} 127.0.0.1 {set.Primary.Port} 2
                sentinel auth-pass {serviceName} {set.Primary.Password}

                """);
            set._sentinel = ChildProcess.Start($"sentinel-{set.SentinelPort}", "redis-server", [config, "--sentinel"], new Dictionary<string, string?>());
            // The Sentinel learns of the replica from the primary's INFO: until then a client would see the primary alone.
            await Eventually.TrueAsync(async () =>
            {
                ThrowIfExited(set._sentinel, "the sentinel");
                try
                {
                    await using var connection = await ConnectionMultiplexer.SentinelConnectAsync(
                        $"127.0.0.1:{set.SentinelPort},password={set.Primary.Password},abortConnect=true,connectTimeout=2000");
                    var replicas = await connection.GetServer(IPAddress.Loopback, set.SentinelPort).SentinelGetReplicaAddressesAsync(serviceName);
                    return replicas.OfType<IPEndPoint>().Any(r => r.Port == set.ReplicaPort);
                }
                catch (RedisException)
                {
                    return false;
                }
            }, TimeSpan.FromSeconds(30), $"the sentinel on port {set.SentinelPort} to know the replica on port {set.ReplicaPort}", TimeSpan.FromMilliseconds(200));
            return set;
        }
        catch
        {
            await set.DisposeAsync();
            throw;
        }
    }

    /// <summary>The replica's INFO replication, as key/value pairs.</summary>
    public Task<Dictionary<string, string>> ReplicaReplicationAsync() => ReplicationAsync(ReplicaPort, Primary.Password);

    private static async Task<Dictionary<string, string>> ReplicationAsync(int port, string password)
    {
        try
        {
            await using var connection = await ConnectionMultiplexer.ConnectAsync(
                $"127.0.0.1:{port},password={password},allowAdmin=true,abortConnect=true,connectTimeout=2000");
            var info = await connection.GetServer(IPAddress.Loopback, port).InfoAsync("replication");
            return info.SelectMany(group => group).ToDictionary(pair => pair.Key, pair => pair.Value);
        }
        catch (RedisException)
        {
            return [];
        }
    }

    private static void ThrowIfExited(ChildProcess process, string what)
    {
        if (process.HasExited)
        {
            throw new InvalidOperationException($"{what} exited: {process.OutputText}");
        }
    }

    public async ValueTask DisposeAsync()
    {
        // The Sentinel first, so that it does not watch the data nodes go down.
        foreach (var process in new[] { _sentinel, _replica })
        {
            if (process is not null)
            {
                await process.KillAsync();
                await process.DisposeAsync();
            }
        }

        await Primary.KillAsync();
        await Primary.DisposeAsync();
        _directory.Dispose();
    }
}
