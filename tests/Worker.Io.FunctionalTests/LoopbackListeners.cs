using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using EventPipeline.Testing;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// A tiny HTTP server on a loopback port that records every request it gets (path, headers, body) and answers each
/// with the status and headers it was told to. Stands in for a webhook target the tests need to see into.
/// </summary>
public sealed class RecordingHttpListener : IAsyncDisposable
{
    public sealed record Request(string Method, string PathAndQuery, IReadOnlyDictionary<string, string> Headers, string Body);

    private readonly HttpListener _listener = new();
    private readonly ConcurrentQueue<Request> _requests = new();
    private readonly Task _loop;
    private readonly int _status;
    private readonly IReadOnlyDictionary<string, string> _responseHeaders;

    private RecordingHttpListener(int port, int status, IReadOnlyDictionary<string, string> responseHeaders, bool asLocalhost)
    {
        Port = port;
        _status = status;
        _responseHeaders = responseHeaders;
        _listener.Prefixes.Add($"http://127.0.0.1:{port}/");
        if (asLocalhost)
        {
            _listener.Prefixes.Add($"http://localhost:{port}/");
        }

        _listener.Start();
        _loop = Task.Run(ServeAsync);
    }

    public int Port { get; }

    public string Origin => $"http://127.0.0.1:{Port}";

    public IReadOnlyList<Request> Requests => _requests.ToArray();

    /// <summary>
    /// Starts on a free loopback port; answers every request with <paramref name="status"/>. With
    /// <paramref name="asLocalhost"/> it also answers requests addressed to <c>localhost</c> (HttpListener refuses a
    /// Host it has no prefix for).
    /// </summary>
    public static RecordingHttpListener Start(int status = 200, IReadOnlyDictionary<string, string>? responseHeaders = null, bool asLocalhost = false) =>
        new(LocalPorts.Free(), status, responseHeaders ?? new Dictionary<string, string>(), asLocalhost);

    private async Task ServeAsync()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext context;
            try
            {
                context = await _listener.GetContextAsync();
            }
            catch (Exception ex) when (ex is HttpListenerException or ObjectDisposedException or InvalidOperationException)
            {
                return;
            }

            using var reader = new StreamReader(context.Request.InputStream, Encoding.UTF8);
            var body = await reader.ReadToEndAsync();
            var headers = context.Request.Headers.AllKeys.Where(k => k is not null)
                .ToDictionary(k => k!, k => context.Request.Headers[k] ?? "", StringComparer.OrdinalIgnoreCase);
            _requests.Enqueue(new Request(context.Request.HttpMethod, context.Request.Url!.PathAndQuery, headers, body));

            context.Response.StatusCode = _status;
            foreach (var (name, value) in _responseHeaders)
            {
                context.Response.Headers[name] = value;
            }

            context.Response.Close();
        }
    }

    public async ValueTask DisposeAsync()
    {
        _listener.Stop();
        _listener.Close();
        await _loop;
    }
}

/// <summary>
/// A loopback port that accepts TCP connections and closes them at once without a byte of HTTP: an open port whose
/// service fails every request. Counts the connections it saw.
/// </summary>
public sealed class ClosingTcpListener : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly Task _loop;
    private int _connections;

    public ClosingTcpListener()
    {
        _listener.Start();
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        _loop = Task.Run(AcceptAsync);
    }

    public int Port { get; }

    public string Origin => $"http://127.0.0.1:{Port}";

    public int Connections => Volatile.Read(ref _connections);

    private async Task AcceptAsync()
    {
        while (true)
        {
            try
            {
                using var client = await _listener.AcceptTcpClientAsync();
                Interlocked.Increment(ref _connections);
                client.Client.Close(0); // reset, no response
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException or InvalidOperationException)
            {
                return;
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        _listener.Stop();
        await _loop;
    }
}
