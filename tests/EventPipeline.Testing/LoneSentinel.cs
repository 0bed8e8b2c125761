using StackExchange.Redis;

namespace EventPipeline.Testing;

/// <summary>
/// One <c>redis-server --sentinel</c> on a free loopback port watching an existing redis-server (quorum 1, no replicas):
/// enough for a client to go through Sentinel discovery (<c>serviceName=</c>) as the cluster AppHost's services do,
/// for the price of one process.
/// </summary>
public sealed class LoneSentinel : IAsyncDisposable
{
    private readonly ScratchDirectory _directory = new("ep-lone-sentinel");
    private ChildProcess? _process;

    private LoneSentinel(RedisServer primary, string serviceName) => (Primary, ServiceName) = (primary, serviceName);

    /// <summary>The name the Sentinel monitors its primary under (<c>serviceName=</c> in a client's connection string).</summary>
    public string ServiceName { get; }

    public RedisServer Primary { get; }

    public int Port { get; private set; }

    public int Pid => _process!.Pid;

    public string ConnectionString => $"127.0.0.1:{Port},serviceName={ServiceName},password={Primary.Password}";

    public static async Task<LoneSentinel> StartAsync(RedisServer primary, string serviceName = "ep-io")
    {
        var sentinel = new LoneSentinel(primary, serviceName);
        try
        {
            sentinel.Port = LocalPorts.Free();
            // Sentinel rewrites its config file, so it gets its own writable copy.
            var config = Path.Combine(sentinel._directory.Path, "sentinel.conf");
            File.WriteAllText(config, $"""
                port {sentinel.Port}
                bind 127.0.0.1
                daemonize no
                dir {sentinel._directory.Path}
                requirepass {primary.Password}
                sentinel announce-ip 127.0.0.1
                sentinel monitor {serviceName} 127.0.0.1 {primary.Port} 1
                sentinel auth-pass {serviceName} {primary.Password}

                """);
            sentinel._process = ChildProcess.Start($"sentinel-{sentinel.Port}", "redis-server", [config, "--sentinel"], new Dictionary<string, string?>());
            await Eventually.TrueAsync(async () =>
            {
                if (sentinel._process.HasExited)
                {
                    throw new InvalidOperationException($"sentinel on port {sentinel.Port} exited: {sentinel._process.OutputText}");
                }

                try
                {
                    await using var client = await ConnectionMultiplexer.ConnectAsync(sentinel.ConnectionString + ",abortConnect=true,connectTimeout=2000");
                    return await client.GetDatabase().PingAsync() >= TimeSpan.Zero;
                }
                catch (RedisException)
                {
                    return false;
                }
            }, TimeSpan.FromSeconds(30), $"a client to reach the primary through the sentinel on port {sentinel.Port}", TimeSpan.FromMilliseconds(200));
            return sentinel;
        }
        catch
        {
            await sentinel.DisposeAsync();
            throw;
        }
    }

    /// <summary>A connection of the test's own to the Sentinel, to count the Sentinel's clients.</summary>
    public async Task<ClientCountProbe> ConnectProbeAsync() =>
        new(await ConnectionMultiplexer.SentinelConnectAsync($"127.0.0.1:{Port},password={Primary.Password},allowAdmin=true,abortConnect=true,connectTimeout=5000"));

    public async ValueTask DisposeAsync()
    {
        if (_process is not null)
        {
            await _process.KillAsync();
            await _process.DisposeAsync();
        }

        _directory.Dispose();
    }
}

/// <summary>The test's own connection to a Sentinel or a redis-server: counts its open client connections (INFO clients), its own included.</summary>
public sealed class ClientCountProbe(ConnectionMultiplexer connection) : IAsyncDisposable
{
    public static async Task<ClientCountProbe> ConnectAsync(string connectionString) =>
        new(await ConnectionMultiplexer.ConnectAsync(connectionString + ",allowAdmin=true,abortConnect=true,connectTimeout=5000"));

    public async Task<int> ClientsAsync()
    {
        var info = await connection.GetServer(connection.GetEndPoints()[0]).InfoAsync("clients");
        var line = info.SelectMany(group => group).Single(pair => pair.Key == "connected_clients");
        return int.Parse(line.Value, System.Globalization.CultureInfo.InvariantCulture);
    }

    public ValueTask DisposeAsync() => connection.DisposeAsync();
}
