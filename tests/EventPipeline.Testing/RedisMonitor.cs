using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text;
using StackExchange.Redis;

namespace EventPipeline.Testing;

/// <summary>
/// Every command the test's redis-server runs, as MONITOR reports it (commands run by scripts included, as
/// <c>[0 lua]</c>; a client's as <c>[0 address]</c>). Lets a test count what the services really did (how often an
/// entry's work was started, how many round trips a request cost) without any hook in the code under test. StackExchange.Redis has no MONITOR, so this speaks RESP on a socket.
/// </summary>
public sealed class RedisMonitor : IAsyncDisposable
{
    private readonly TcpClient _client;
    private readonly ConcurrentQueue<string> _lines = new();
    private readonly Task _reading;

    private RedisMonitor(TcpClient client)
    {
        _client = client;
        _reading = Task.Run(ReadAsync);
    }

    public static async Task<RedisMonitor> StartAsync(RedisServer redis)
    {
        var client = new TcpClient();
        await client.ConnectAsync("127.0.0.1", redis.Port);
        var stream = client.GetStream();
        var reader = new StreamReader(stream, Encoding.UTF8, false, 1 << 16, leaveOpen: true);
        await stream.WriteAsync(Encoding.UTF8.GetBytes($"AUTH {redis.Password}\r\nMONITOR\r\n"));
        for (var i = 0; i < 2; i++)
        {
            var reply = await reader.ReadLineAsync();
            if (reply != "+OK")
            {
                client.Dispose();
                throw new InvalidOperationException($"MONITOR was refused: {reply}");
            }
        }

        reader.Dispose();
        return new RedisMonitor(client);
    }

    public IReadOnlyCollection<string> Lines => _lines;

    /// <summary>The commands seen after the first <paramref name="skip"/> (a count of <see cref="Lines"/> taken earlier).</summary>
    public IEnumerable<string> LinesAfter(int skip) => _lines.Skip(skip);

    /// <summary>How many times a command with exactly these leading arguments ran (e.g. HINCRBY, key, field).</summary>
    public int Count(params string[] commandAndArguments)
    {
        var quoted = string.Join(' ', commandAndArguments.Select(a => $"\"{a}\""));
        return _lines.Count(line => line.Contains("] " + quoted, StringComparison.OrdinalIgnoreCase));
    }

    /// <summary>
    /// Commands clients sent (not those scripts ran) that name <paramref name="text"/>, once everything Redis ran
    /// before this call is in the log: a marker sent now is seen after all of it (one server thread, one ordered feed).
    /// </summary>
    public async Task<IReadOnlyList<string>> SentNamingAsync(string text, IDatabase db)
    {
        var marker = "monitor-marker-" + Guid.NewGuid().ToString("N");
        await db.StringGetAsync(marker);
        await Eventually.TrueAsync(() => Task.FromResult(_lines.Any(l => l.Contains(marker, StringComparison.Ordinal))),
            TimeSpan.FromSeconds(30), "the MONITOR feed to reach the marker", TimeSpan.FromMilliseconds(20));
        return [.. _lines.Where(l => !l.Contains(" lua] ", StringComparison.Ordinal) && l.Contains(text, StringComparison.Ordinal))];
    }

    private async Task ReadAsync()
    {
        try
        {
            using var reader = new StreamReader(_client.GetStream(), Encoding.UTF8);
            while (await reader.ReadLineAsync() is { } line)
            {
                _lines.Enqueue(line);
            }
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or SocketException)
        {
            // closed by DisposeAsync, or the server went away: what was seen so far stays readable
        }
    }

    public async ValueTask DisposeAsync()
    {
        _client.Dispose();
        await _reading;
    }
}
