using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using EventPipeline.Testing;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// Loopback endpoints the origin tests point events at, alive for the whole class: a redirector (allowed, answers 307
/// to the sink), a sink nobody allowed, an open port that fails every request, a closed port, and an allowed endpoint
/// addressed as <c>localhost</c> whose name the worker's configuration also maps to the sink for service discovery.
/// </summary>
public sealed class OriginTargets : IAsyncLifetime
{
    public OriginTargets()
    {
        Sink = RecordingHttpListener.Start();
        Redirector = RecordingHttpListener.Start(307, new Dictionary<string, string> { ["Location"] = $"{Sink.Origin}/stolen" });
        Failing = new ClosingTcpListener();
        ClosedPort = LocalPorts.Free();
        Named = RecordingHttpListener.Start(asLocalhost: true);
        Throttling = new ThrottlingHttpListener(ThrottledRetryAfterSeconds);
        CookieSetter = RecordingHttpListener.Start(200, new Dictionary<string, string> { ["Set-Cookie"] = "session=from-an-earlier-delivery; Path=/" });
    }

    public const int ThrottledRetryAfterSeconds = 5;

    public RecordingHttpListener Sink { get; }

    public RecordingHttpListener Redirector { get; }

    public ClosingTcpListener Failing { get; }

    public int ClosedPort { get; }

    public RecordingHttpListener Named { get; }

    public string NamedOrigin => $"http://localhost:{Named.Port}";

    public ThrottlingHttpListener Throttling { get; }

    /// <summary>Allowed; answers every delivery 200 with a Set-Cookie.</summary>
    public RecordingHttpListener CookieSetter { get; }

    /// <summary>What the worker is allowed to call besides its configured receiver: never the sink.</summary>
    public Dictionary<string, string?> WorkerSettings => new()
    {
        ["Downstream__AllowedOrigins__0"] = Redirector.Origin,
        ["Downstream__AllowedOrigins__1"] = Failing.Origin,
        ["Downstream__AllowedOrigins__2"] = $"http://127.0.0.1:{ClosedPort}",
        ["Downstream__AllowedOrigins__3"] = NamedOrigin,
        ["Downstream__AllowedOrigins__4"] = Throttling.Origin,
        ["Downstream__AllowedOrigins__5"] = CookieSetter.Origin,
        // What Aspire's WithReference writes for a service called "localhost": a resolver honouring it would send calls
        // for http://localhost:<port> to the sink, past the allow-list check.
        ["services__localhost__http__0"] = Sink.Origin,
    };

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        await Sink.DisposeAsync();
        await Redirector.DisposeAsync();
        await Failing.DisposeAsync();
        await Named.DisposeAsync();
        await Throttling.DisposeAsync();
        await CookieSetter.DisposeAsync();
    }
}

/// <summary>
/// Webhook targets are allowed by origin (scheme, host and port), at the API and again in the worker; redirects are
/// never followed; the error a caller can read back never tells an open port from a closed one; a 429's Retry-After is
/// waited out without holding the connection it came on; and a 2xx counts as delivered on its status line.
/// </summary>
[Collection(SharedIoLaneCollection.Name)]
public sealed class DownstreamOriginTests(SharedIoLane lane, OriginTargets targets) : IClassFixture<OriginTargets>
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(90);
    private IoLaneHost Host => lane.Host;

    [Fact]
    public async Task Target_on_another_port_of_an_allowed_host_is_refused_with_400_at_the_api()
    {
        // The API allows the receiver's origin (127.0.0.1:<its port>); the sink listens on another port of that host.
        var id = IoLaneHost.NewId("otherport");
        var direct = IoLaneHost.Webhook(id);
        direct["target"] = $"{targets.Sink.Origin}/admin";
        var chained = new JsonObject
        {
            ["type"] = "hash.pbkdf2",
            ["payload"] = new JsonObject
            {
                ["data"] = "x",
                ["iterations"] = 1,
                ["then"] = new JsonObject { ["type"] = "webhook.post", ["target"] = $"{targets.Sink.Origin}/admin", ["payload"] = new JsonObject() },
            },
        };

        foreach (var (evt, field) in new[] { (direct, "target"), (chained, "payload.then.target") })
        {
            using var response = await Host.SubmitAsync(evt);
            var text = await response.Content.ReadAsStringAsync();
            Assert.True(response.StatusCode == HttpStatusCode.BadRequest, $"a target on another port answered {(int)response.StatusCode}: {text}");
            var errors = JsonDocument.Parse(text).RootElement.GetProperty("errors");
            Assert.True(errors.TryGetProperty(field, out _), $"no error at {field}: {text}");
        }

        Assert.Null((await Host.StatusAsync(id)).State);
        Assert.Empty(targets.Sink.Requests);
    }

    [Fact]
    public async Task Worker_refuses_a_target_outside_its_allowed_origins_without_calling_it()
    {
        await Host.EnsureWorkerAsync(targets.WorkerSettings);
        var id = IoLaneHost.NewId("bypass");
        // Straight onto the queue, past the API's check: the worker's own check is all that stands in the way.
        await Host.PublishDirectAsync(id, "webhook.post", new JsonObject { ["n"] = 1 }, $"{targets.Sink.Origin}/admin");

        var final = await Eventually.ReturnsAsync(() => Host.StatusAsync(id), s => s.State is "succeeded" or "dead", Deadline, $"{id} to finish");
        Assert.Empty(targets.Sink.Requests);
        Assert.Equal("dead", final.State);
        Assert.Equal(1, final.Attempts);
        Assert.DoesNotContain(targets.Sink.Port.ToString(), final.Error);
    }

    [Fact]
    public async Task Worker_calls_the_origin_it_checked_even_when_service_discovery_maps_its_host_elsewhere()
    {
        await Host.EnsureWorkerAsync(targets.WorkerSettings);
        var id = IoLaneHost.NewId("named");
        await Host.PublishDirectAsync(id, "webhook.post", new JsonObject { ["n"] = 1 }, $"{targets.NamedOrigin}/hook");

        var final = await Eventually.ReturnsAsync(() => Host.StatusAsync(id), s => s.State is "succeeded" or "dead", Deadline, $"{id} to finish");
        Assert.DoesNotContain(targets.Sink.Requests, r => r.Headers.GetValueOrDefault("Idempotency-Key") == id);
        Assert.Single(targets.Named.Requests, r => r.Headers.GetValueOrDefault("Idempotency-Key") == id);
        Assert.Equal("succeeded", final.State);
    }

    [Fact]
    public async Task Redirect_from_an_allowed_target_is_not_followed()
    {
        await Host.EnsureWorkerAsync(targets.WorkerSettings);
        var id = IoLaneHost.NewId("redirected");
        await Host.PublishDirectAsync(id, "webhook.post", new JsonObject { ["n"] = 1 }, $"{targets.Redirector.Origin}/hook");

        var final = await Eventually.ReturnsAsync(() => Host.StatusAsync(id), s => s.State is "succeeded" or "dead", Deadline, $"{id} to finish");
        Assert.DoesNotContain(targets.Sink.Requests, r => r.Headers.GetValueOrDefault("Idempotency-Key") == id);
        Assert.Single(targets.Redirector.Requests, r => r.Headers.GetValueOrDefault("Idempotency-Key") == id);
        Assert.Equal("dead", final.State);
        Assert.Contains("307", final.Error);
        Assert.DoesNotContain(targets.Sink.Port.ToString(), final.Error);
    }

    [Fact]
    public async Task Error_text_of_a_closed_port_equals_that_of_an_open_port_that_fails()
    {
        await Host.EnsureWorkerAsync(targets.WorkerSettings);
        var closed = IoLaneHost.NewId("closedport");
        var open = IoLaneHost.NewId("openport");
        await Host.PublishDirectAsync(closed, "webhook.post", new JsonObject { ["n"] = 1 }, $"http://127.0.0.1:{targets.ClosedPort}/hook");
        await Host.PublishDirectAsync(open, "webhook.post", new JsonObject { ["n"] = 1 }, $"{targets.Failing.Origin}/hook");

        var closedFinal = await Eventually.ReturnsAsync(() => Host.StatusAsync(closed), s => s.State is "succeeded" or "dead", Deadline, $"{closed} to finish");
        var openFinal = await Eventually.ReturnsAsync(() => Host.StatusAsync(open), s => s.State is "succeeded" or "dead", Deadline, $"{open} to finish");

        Assert.True(targets.Failing.Connections > 0, "the open port was never called");
        Assert.Equal("dead", closedFinal.State);
        Assert.Equal("dead", openFinal.State);
        Assert.Equal(closedFinal.Error, openFinal.Error);
        Assert.DoesNotContain(targets.ClosedPort.ToString(), closedFinal.Error);
        Assert.DoesNotContain(targets.Failing.Port.ToString(), openFinal.Error);
    }

    [Fact]
    public async Task A_429_gives_its_connection_back_before_waiting_out_its_Retry_After()
    {
        await Host.EnsureWorkerAsync(targets.WorkerSettings);
        var throttled = IoLaneHost.NewId("throttled");
        await Host.PublishDirectAsync(throttled, "webhook.post", new JsonObject { ["n"] = 1 }, $"{targets.Throttling.Origin}/hook");
        var first = await Eventually.ReturnsAsync(() => Task.FromResult(targets.Throttling.ArrivalsOf(throttled)), a => a.Length > 0,
            Deadline, $"{throttled} to reach the throttling target");

        // Sent while the worker waits out the 429's Retry-After: the connection the 429 came on is idle then, unless the
        // wait holds it (and so a socket per throttled delivery, for up to 30 s each). Only once the worker has let the
        // 429's response go and begun its wait (its log line, written after the response is disposed): the target records
        // an arrival before it answers, and a delivery sent before the answer found that connection still busy (CI of
        // session 9: "came on a new connection" after 120 ms).
        await Eventually.TrueAsync(() => Task.FromResult(Host.Worker!.Output.Any(l => l.Contains($"Event {throttled} waits", StringComparison.Ordinal))),
            Deadline, $"the worker to begin the Retry-After wait of {throttled}", TimeSpan.FromMilliseconds(20));
        var other = IoLaneHost.NewId("other");
        await Host.PublishDirectAsync(other, "webhook.post", new JsonObject { ["n"] = 2 }, $"{targets.Throttling.Origin}/hook");
        var otherArrival = await Eventually.ReturnsAsync(() => Task.FromResult(targets.Throttling.ArrivalsOf(other)), a => a.Length > 0,
            Deadline, $"{other} to reach the throttling target");
        Assert.True(targets.Throttling.ArrivalsOf(throttled).Length == 1,
            $"{other} arrived only after the Retry-After wait ended, so this run cannot tell whether the wait held the connection");
        Assert.True(otherArrival[0].RemotePort == first[0].RemotePort,
            $"{other} came on a new connection (port {otherArrival[0].RemotePort}) while the 429's connection (port {first[0].RemotePort}) was held through its Retry-After");

        // The Retry-After is still honoured: the retry comes no sooner than it said.
        var final = await Eventually.ReturnsAsync(() => Host.StatusAsync(throttled), s => s.State is "succeeded" or "dead", Deadline, $"{throttled} to finish");
        Assert.Equal("succeeded", final.State);
        var arrivals = targets.Throttling.ArrivalsOf(throttled);
        Assert.Equal(2, arrivals.Length);
        Assert.True(arrivals[1].At - arrivals[0].At >= TimeSpan.FromSeconds(OriginTargets.ThrottledRetryAfterSeconds - 0.5),
            $"retried {(arrivals[1].At - arrivals[0].At).TotalSeconds:F1} s after a 429 with Retry-After: {OriginTargets.ThrottledRetryAfterSeconds}");
    }

    [Fact]
    public async Task A_cookie_a_downstream_set_is_never_sent_with_a_later_webhook()
    {
        await Host.EnsureWorkerAsync(targets.WorkerSettings);
        var first = IoLaneHost.NewId("cookie-first");
        await Host.PublishDirectAsync(first, "webhook.post", new JsonObject { ["n"] = 1 }, $"{targets.CookieSetter.Origin}/hook");
        Assert.Equal("succeeded", (await Eventually.ReturnsAsync(() => Host.StatusAsync(first), s => s.State is "succeeded" or "dead", Deadline, $"{first} to finish")).State);

        // Another event (in real use: another submitter's) to the same origin, after the first answer's Set-Cookie.
        var second = IoLaneHost.NewId("cookie-second");
        await Host.PublishDirectAsync(second, "webhook.post", new JsonObject { ["n"] = 2 }, $"{targets.CookieSetter.Origin}/hook");
        Assert.Equal("succeeded", (await Eventually.ReturnsAsync(() => Host.StatusAsync(second), s => s.State is "succeeded" or "dead", Deadline, $"{second} to finish")).State);

        var delivered = Assert.Single(targets.CookieSetter.Requests, r => r.Headers.GetValueOrDefault("Idempotency-Key") == second);
        Assert.False(delivered.Headers.TryGetValue("Cookie", out var cookie), $"{second} carried the cookie an earlier delivery was given: Cookie: {cookie}");
    }

    [Fact]
    public async Task A_2xx_counts_as_delivered_when_its_headers_arrive_even_if_its_body_stalls()
    {
        await Host.EnsureWorkerAsync(targets.WorkerSettings);
        var stalled = IoLaneHost.NewId("stalled");
        await Host.PublishDirectAsync(stalled, "webhook.post", new JsonObject { ["n"] = 1 }, $"{targets.Throttling.Origin}/hook");

        // The target sends 200 and a few bytes of a longer body, then nothing until the class ends: far longer than this
        // deadline. The status line is the downstream's answer; waiting for the body would hold the slot until the timeout.
        var final = await Eventually.ReturnsAsync(() => Host.StatusAsync(stalled), s => s.State is "succeeded" or "dead",
            TimeSpan.FromSeconds(30), $"{stalled} to finish while its 2xx body is still stalled");
        Assert.Equal("succeeded", final.State);
        Assert.Equal(1, final.Attempts);
        Assert.Single(targets.Throttling.ArrivalsOf(stalled));
    }
}

/// <summary>
/// A loopback HTTP target that answers the first delivery of every key whose name starts with "throttled" 429 with a
/// Retry-After and a small body (as real rate limiters do); a key starting with "stalled" 200 with the first bytes of a
/// longer body and then nothing until disposal; everything else 200. Records which connection (client port) and when
/// each delivery came.
/// </summary>
public sealed class ThrottlingHttpListener : IAsyncDisposable
{
    public sealed record Arrival(string Key, int RemotePort, DateTimeOffset At);

    private readonly HttpListener _listener = new();
    private readonly System.Collections.Concurrent.ConcurrentQueue<Arrival> _arrivals = new();
    private readonly int _retryAfterSeconds;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;

    public ThrottlingHttpListener(int retryAfterSeconds)
    {
        _retryAfterSeconds = retryAfterSeconds;
        Port = LocalPorts.Free();
        _listener.Prefixes.Add($"{Origin}/");
        _listener.Start();
        _loop = Task.Run(ServeAsync);
    }

    public int Port { get; }

    public string Origin => $"http://127.0.0.1:{Port}";

    public Arrival[] ArrivalsOf(string key) => _arrivals.Where(a => a.Key == key).ToArray();

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

            using (var reader = new StreamReader(context.Request.InputStream))
            {
                await reader.ReadToEndAsync();
            }

            var key = context.Request.Headers["Idempotency-Key"] ?? "";
            var firstOfThrottled = key.StartsWith("throttled", StringComparison.Ordinal) && !_arrivals.Any(a => a.Key == key);
            _arrivals.Enqueue(new Arrival(key, context.Request.RemoteEndPoint.Port, DateTimeOffset.UtcNow));
            if (key.StartsWith("stalled", StringComparison.Ordinal))
            {
                // Answered on its own task: the stall must not hold up the requests behind it.
                _ = StallAsync(context);
                continue;
            }

            if (firstOfThrottled)
            {
                context.Response.StatusCode = 429;
                context.Response.Headers["Retry-After"] = _retryAfterSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
                var body = "{\"title\":\"Too Many Requests\"}"u8.ToArray();
                context.Response.ContentType = "application/problem+json";
                context.Response.ContentLength64 = body.Length;
                await context.Response.OutputStream.WriteAsync(body);
            }
            else
            {
                context.Response.StatusCode = 200;
            }

            context.Response.Close();
        }
    }

    private async Task StallAsync(HttpListenerContext context)
    {
        try
        {
            context.Response.StatusCode = 200;
            context.Response.ContentLength64 = 1_000;
            await context.Response.OutputStream.WriteAsync("{\"accepted\":"u8.ToArray());
            await context.Response.OutputStream.FlushAsync();
            await Task.Delay(Timeout.Infinite, _stop.Token);
        }
        catch (Exception ex) when (ex is OperationCanceledException or HttpListenerException or ObjectDisposedException or IOException)
        {
        }
        finally
        {
            context.Response.Abort();
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        _listener.Close();
        await _loop;
        _stop.Dispose();
    }
}
