using System.Net.Http.Json;
using System.Text.Json;
using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Aspire.Hosting.Testing;
using EventPipeline.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace EventPipeline.Observability.Tests;

/// <summary>
/// The whole system from the real AppHost, once per collection: brokers, services, Prometheus and the Redis exporter as
/// local executables on free loopback ports with their data in a temp directory, the Aspire dashboard on (without
/// login, for the screenshot), and every service exporting OTLP to an in-test receiver that also feeds the dashboard.
/// </summary>
public sealed class ObservedAppHostFixture : IAsyncLifetime
{
    /// <summary>Every resource the AppHost starts on a machine without a container engine.</summary>
    public static readonly string[] ResourceNames =
        ["redis", "rabbitmq-epmd", "rabbitmq", "downstream", "producer-api", "worker-cpu", "worker-io", "redis-exporter", "prometheus"];

    public static readonly string[] Services = ["producer-api", "worker-cpu", "worker-io", "downstream"];

    private static readonly TimeSpan ProcessingDeadline = TimeSpan.FromSeconds(90);
    private readonly ScratchDirectory _data = new("ep-obs");
    private readonly SemaphoreSlim _burstGate = new(1, 1);
    private IReadOnlyList<BurstEvent>? _burst;
    private DistributedApplication? _app;
    private ChildProcess? _apiReplica;

    public OtlpReceiver Otlp { get; } = new();

    public string SubmitKey { get; } = "submit-" + Guid.NewGuid().ToString("N");

    public string AdminKey { get; } = "admin-" + Guid.NewGuid().ToString("N");

    public DistributedApplication App => _app ?? throw new InvalidOperationException("not started");

    public Uri DashboardUrl { get; private set; } = null!;

    public HttpClient Api { get; private set; } = null!;

    public PrometheusClient Prometheus { get; private set; } = null!;

    public string PrometheusConfigDirectory => Path.Combine(_data.Path, "prometheus", "config");

    public async Task InitializeAsync()
    {
        await Otlp.StartAsync(LocalPorts.Free());
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.AppHost>(
        [
            .. AppHostArguments.ForTest(_data.Path, SubmitKey, AdminKey, "obs"),
            // The dashboard, without login and without TLS, on loopback ports of its own.
            $"ASPNETCORE_URLS=http://127.0.0.1:{LocalPorts.Free()}",
            $"ASPIRE_DASHBOARD_OTLP_ENDPOINT_URL=http://127.0.0.1:{LocalPorts.Free()}",
            $"ASPIRE_DASHBOARD_OTLP_HTTP_ENDPOINT_URL=http://127.0.0.1:{LocalPorts.Free()}",
            $"ASPIRE_RESOURCE_SERVICE_ENDPOINT_URL=http://127.0.0.1:{LocalPorts.Free()}",
            "ASPIRE_DASHBOARD_UNSECURED_ALLOW_ANONYMOUS=true",
            "ASPIRE_ALLOW_UNSECURED_TRANSPORT=true",
        ], (options, _) =>
        {
            options.DisableDashboard = false;
            options.AllowUnsecuredTransport = true;
        });
        builder.Services.AddLogging(logging => logging.SetMinimumLevel(LogLevel.Warning));

        foreach (var project in builder.Resources.OfType<ProjectResource>())
        {
            // Added after the AppHost's own OTLP settings, so these win: telemetry goes through the test's receiver.
            project.Annotations.Add(new EnvironmentCallbackAnnotation(env =>
            {
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = Otlp.Endpoint.ToString().TrimEnd('/');
                env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf";
                env["OTEL_BSP_SCHEDULE_DELAY"] = "500";
                env["OTEL_BLRP_SCHEDULE_DELAY"] = "500";
                env["OTEL_TRACES_SAMPLER"] = "always_on";
                // Short retry delays, so a failing event reaches its dead letter within seconds.
                env["CpuLane__RetryBaseDelay"] = "00:00:00.200";
                env["CpuLane__RetryMaxDelay"] = "00:00:01";
                env["IoLane__RetryMaxInterval"] = "00:00:01";
            }));
        }


        _app = await builder.BuildAsync();
        using var startup = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        await _app.StartAsync(startup.Token);
        foreach (var resource in ResourceNames)
        {
            await _app.ResourceNotifications.WaitForResourceHealthyAsync(resource, startup.Token);
        }

        // The testing builder randomizes ports, the dashboard's too: ask for the one it got.
        DashboardUrl = _app.GetEndpoint("aspire-dashboard", "http");
        Otlp.ForwardTo = _app.GetEndpoint("aspire-dashboard", "otlp-http");
        Api = _app.CreateHttpClient("producer-api");
        Api.DefaultRequestHeaders.Add("X-Api-Key", SubmitKey);
        Prometheus = new PrometheusClient(_app.CreateHttpClient("prometheus", "http"));
        await StartApiReplicaAsync(startup.Token);
    }

    /// <summary>Instance (host:port) of the second Producer.Api process, as Prometheus labels its series.</summary>
    public string ApiReplicaInstance { get; private set; } = null!;

    /// <summary>
    /// A second Producer.Api process on the same brokers with the AppHost's own configuration, scraped by the same
    /// Prometheus job: production runs at least two API replicas (HPA minimum), and each exports the same lane gauges.
    /// The AppHost starts one API; the replica's file_sd file sits next to the AppHost's (job eventpipeline reads
    /// targets/eventpipeline*.json).
    /// </summary>
    private async Task StartApiReplicaAsync(CancellationToken cancellationToken)
    {
        var model = App.Services.GetRequiredService<DistributedApplicationModel>();
        var api = (IResourceWithEnvironment)model.Resources.Single(r => r.Name == "producer-api");
        var configuration = await ExecutionConfigurationBuilder.Create(api).WithEnvironmentVariablesConfig()
            .BuildAsync(App.Services.GetRequiredService<DistributedApplicationExecutionContext>(), NullLogger.Instance, cancellationToken);
        _apiReplica = ServiceProcess.Start("Producer.Api", configuration.EnvironmentVariables.ToDictionary(e => e.Key, e => (string?)e.Value), out var port);
        await ServiceProcess.WaitUntilReadyAsync(_apiReplica, port, TimeSpan.FromSeconds(90));
        ApiReplicaInstance = $"127.0.0.1:{port}";
        var targets = Path.Combine(PrometheusConfigDirectory, "targets", "eventpipeline-replica.json");
        await File.WriteAllTextAsync(targets + ".tmp", JsonSerializer.Serialize(new[]
        {
            new { targets = new[] { ApiReplicaInstance }, labels = new Dictionary<string, string> { ["service"] = "producer-api" } },
        }), cancellationToken);
        File.Move(targets + ".tmp", targets, overwrite: true);
    }

    public HttpClient CreateClient(string resource) => App.CreateHttpClient(resource, "http");

    public async Task<string> SubmitAsync(string type, object payload)
    {
        using var response = await Api.PostAsJsonAsync("/events", new { type, payload });
        var body = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.True(response.IsSuccessStatusCode, $"POST /events {type} answered {(int)response.StatusCode}: {body}");
        return body.GetProperty("id").GetString()!;
    }

    public async Task<JsonElement> WaitForStateAsync(string id, string state) =>
        await Eventually.ReturnsAsync(
            () => Api.GetFromJsonAsync<JsonElement>($"/events/{id}"),
            s => s.GetProperty("state").GetString() == state,
            ProcessingDeadline,
            $"event {id} to be {state}",
            TimeSpan.FromMilliseconds(250));

    /// <summary>
    /// Once per run: successes on both lanes plus failures that end as dead letters on both lanes — <c>test.fail</c>
    /// on each, and webhooks whose receiver answers 500 — and waits until every one has its final state.
    /// </summary>
    public async Task<IReadOnlyList<BurstEvent>> EnsureFailureBurstAsync()
    {
        await _burstGate.WaitAsync();
        try
        {
            if (_burst is not null)
            {
                return _burst;
            }

            var burst = new List<(string Type, object Payload, string Lane, string Final)>();
            for (var i = 0; i < 20; i++)
            {
                burst.Add(("hash.pbkdf2", new { data = $"burst {i}", iterations = 2000 }, "cpu", "succeeded"));
                burst.Add(("webhook.post", new { order = $"burst {i}" }, "io", "succeeded"));
            }

            for (var i = 0; i < 3; i++)
            {
                burst.Add(("test.fail", new { lane = "cpu" }, "cpu", "dead"));
                burst.Add(("test.fail", new { lane = "io" }, "io", "dead"));
                burst.Add(("webhook.post", new { order = $"refused {i}", simulate = new { status = 500 } }, "io", "dead"));
            }

            var deadBefore = await DeadLettersAsync();
            var submitted = await Task.WhenAll(burst.Select(async e => new BurstEvent(await SubmitAsync(e.Type, e.Payload), e.Type, e.Lane, e.Final)));
            await Task.WhenAll(submitted.Where(e => e.FinalState == "succeeded" || e.Lane == "cpu").Select(e => WaitForStateAsync(e.Id, e.FinalState)));
            // The I/O lane's failures are counted where they end up, its error queue: their status is not what is shown here.
            await Eventually.ReturnsAsync(DeadLettersAsync,
                dead => submitted.GroupBy(e => e.Lane).All(lane => dead[lane.Key] >= deadBefore[lane.Key] + lane.Count(e => e.FinalState == "dead")),
                ProcessingDeadline, "the burst's failures to reach both lanes' dead letters", TimeSpan.FromMilliseconds(500));
            return _burst = submitted;
        }
        finally
        {
            _burstGate.Release();
        }
    }

    /// <summary>Dead letters per lane as the API reports them (<c>GET /lanes</c>).</summary>
    public async Task<Dictionary<string, long>> DeadLettersAsync()
    {
        var lanes = await Api.GetFromJsonAsync<JsonElement>("/lanes");
        return lanes.GetProperty("lanes").EnumerateArray().ToDictionary(l => l.GetProperty("name").GetString()!, l => l.GetProperty("deadLetters").GetInt64());
    }

    /// <summary>Runs one of Aspire's resource commands (stop, start) as the dashboard's buttons do.</summary>
    public async Task ExecuteResourceCommandAsync(string resourceName, string command)
    {
        var model = App.Services.GetRequiredService<DistributedApplicationModel>();
        var resource = model.Resources.Single(r => r.Name == resourceName);
        var result = await App.ResourceCommands.ExecuteCommandAsync(resource, command);
        Assert.True(result.Success, $"{command} {resourceName} failed: {result.Message}");
    }

    public async Task DisposeAsync()
    {
        Api?.Dispose();
        if (_apiReplica is not null)
        {
            await _apiReplica.DisposeAsync();
        }

        if (_app is not null)
        {
            await _app.StopAsync();
            await _app.DisposeAsync();
        }

        await Otlp.DisposeAsync();
        _data.Dispose();
    }
}

public sealed record BurstEvent(string Id, string Type, string Lane, string FinalState);

[CollectionDefinition(Name)]
public sealed class ObservedAppHostCollection : ICollectionFixture<ObservedAppHostFixture>
{
    public const string Name = "Observed AppHost";
}

/// <summary>Files of the repository the tests check (infra/, docs/).</summary>
public static class Repository
{
    public static string Root { get; } = FindRoot();

    public static string PathOf(params string[] parts) => Path.Combine([Root, .. parts]);

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "EventPipeline.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException("EventPipeline.sln not found above " + AppContext.BaseDirectory);
    }
}
