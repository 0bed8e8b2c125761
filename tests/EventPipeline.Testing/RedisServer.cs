using StackExchange.Redis;

namespace EventPipeline.Testing;

/// <summary>
/// A real Debian <c>redis-server</c> on a free loopback port, with AOF on and a password, in a temp directory.
/// It can be killed and started again on the same port and data directory (what a Redis restart looks like).
/// </summary>
public sealed class RedisServer : IAsyncDisposable
{
    private readonly ScratchDirectory _directory = new("ep-redis");
    private ChildProcess? _process;

    private RedisServer()
    {
        Port = LocalPorts.Free();
    }

    public int Port { get; }

    public string Password { get; } = "test-" + Guid.NewGuid().ToString("N")[..16];

    public string DataDirectory => _directory.Path;

    public string ConnectionString => $"127.0.0.1:{Port},password={Password}";

    public bool IsRunning => _process is { HasExited: false };

    /// <summary>The running server's process id (for pausing it with <see cref="ProcessPause"/>).</summary>
    public int Pid => _process?.Pid ?? throw new InvalidOperationException("redis-server is not running");

    public static async Task<RedisServer> StartAsync()
    {
        var server = new RedisServer();
        await server.StartProcessAsync();
        return server;
    }

    public async Task StartProcessAsync()
    {
        _process = ChildProcess.Start("redis-server", "redis-server",
            ["--port", Port.ToString(), "--bind", "127.0.0.1", "--dir", DataDirectory, "--daemonize", "no",
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--requirepass", Password],
            new Dictionary<string, string?>());
        await Eventually.TrueAsync(async () =>
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"redis-server exited: {_process.OutputText}");
            }

            await using var connection = await ConnectAsync();
            return (await connection.GetDatabase().PingAsync()) >= TimeSpan.Zero;
        }, TimeSpan.FromSeconds(30), $"redis-server on port {Port} to answer PING");
    }

    /// <summary>kill -9 the server (AOF everysec: writes confirmed in the last second may be lost, as documented).</summary>
    public async Task KillAsync()
    {
        if (_process is not null)
        {
            await _process.KillAsync();
        }
    }

    public async Task<ConnectionMultiplexer> ConnectAsync()
    {
        var options = ConfigurationOptions.Parse(ConnectionString);
        options.AbortOnConnectFail = true;
        options.ConnectTimeout = 2000;
        return await ConnectionMultiplexer.ConnectAsync(options);
    }

    public async ValueTask DisposeAsync()
    {
        if (_process is not null)
        {
            await _process.DisposeAsync();
        }

        _directory.Dispose();
    }
}
