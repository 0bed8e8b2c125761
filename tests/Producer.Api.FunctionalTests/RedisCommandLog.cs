using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text;
using EventPipeline.Testing;
using StackExchange.Redis;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// Every command the test's redis-server runs, as MONITOR reports it: a client's command as <c>[db address]</c>, one a
/// script ran as <c>[db lua]</c>. Counts the API's round trips for a request without any hook in the API.
/// StackExchange.Redis has no MONITOR, so this speaks RESP on a socket.
/// </summary>
public sealed class RedisCommandLog : IAsyncDisposable
{
    private readonly TcpClient _client;
    private readonly ConcurrentQueue<string> _lines = new();
    private readonly Task _reading;

    private RedisCommandLog(TcpClient client, StreamReader reader)
    {
        _client = client;
        _reading = Task.Run(() => ReadAsync(reader));
    }

    public static async Task<RedisCommandLog> StartAsync(RedisServer redis)
    {
        var client = new TcpClient();
        await client.ConnectAsync("127.0.0.1", redis.Port);
        var stream = client.GetStream();
        var reader = new StreamReader(stream, Encoding.UTF8, false, 1 << 16);
        await stream.WriteAsync(Encoding.UTF8.GetBytes($"AUTH {redis.Password}\r\nMONITOR\r\n"));
        for (var i = 0; i < 2; i++)
        {
            if (await reader.ReadLineAsync() is var reply && reply != "+OK")
            {
                client.Dispose();
                throw new InvalidOperationException($"MONITOR was refused: {reply}");
            }
        }

        return new RedisCommandLog(client, reader);
    }

    /// <summary>
    /// Commands clients sent (not those scripts ran) that name <paramref name="text"/>, once everything Redis ran
    /// before this call is in the log: a marker sent now is seen after all of it (one server thread, one ordered feed).
    /// </summary>
    public async Task<IReadOnlyList<string>> SentNamingAsync(string text, IDatabase db)
    {
        var marker = "command-log-marker-" + Guid.NewGuid().ToString("N");
        await db.StringGetAsync(marker);
        await Eventually.TrueAsync(() => Task.FromResult(_lines.Any(l => l.Contains(marker, StringComparison.Ordinal))),
            TimeSpan.FromSeconds(30), "the MONITOR feed to reach the marker", TimeSpan.FromMilliseconds(20));
        return [.. _lines.Where(l => !l.Contains(" lua] ", StringComparison.Ordinal) && l.Contains(text, StringComparison.Ordinal))];
    }

    private async Task ReadAsync(StreamReader reader)
    {
        try
        {
            using (reader)
            {
                while (await reader.ReadLineAsync() is { } line)
                {
                    _lines.Enqueue(line);
                }
            }
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or SocketException)
        {
            // closed by DisposeAsync, or the server went away
        }
    }

    public async ValueTask DisposeAsync()
    {
        _client.Dispose();
        await _reading;
    }
}
