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
    }

    public RecordingHttpListener Sink { get; }

    public RecordingHttpListener Redirector { get; }

    public ClosingTcpListener Failing { get; }

    public int ClosedPort { get; }

    public RecordingHttpListener Named { get; }

    public string NamedOrigin => $"http://localhost:{Named.Port}";

    /// <summary>What the worker is allowed to call besides its configured receiver: never the sink.</summary>
    public Dictionary<string, string?> WorkerSettings => new()
    {
        ["Downstream__AllowedOrigins__0"] = Redirector.Origin,
        ["Downstream__AllowedOrigins__1"] = Failing.Origin,
        ["Downstream__AllowedOrigins__2"] = $"http://127.0.0.1:{ClosedPort}",
        ["Downstream__AllowedOrigins__3"] = NamedOrigin,
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
    }
}

/// <summary>
/// Webhook targets are allowed by origin (scheme, host and port), at the API and again in the worker; redirects are
/// never followed; and the error a caller can read back never tells an open port from a closed one.
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
}
