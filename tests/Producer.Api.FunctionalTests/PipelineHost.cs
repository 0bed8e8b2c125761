using System.Net.Http.Json;
using System.Text.Json;
using EventPipeline.Testing;
using StackExchange.Redis;

[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// Real brokers (redis-server, rabbitmq-server on loopback, temp dirs) and the API as a real process; workers and the
/// downstream receiver are started on demand. Everything it started is ended by PID on dispose.
/// </summary>
public sealed class PipelineHost : IAsyncDisposable
{
    public const string SubmitKey = "functional-submit-key-0123456789";
    public const string AdminKey = "functional-admin-key-9876543210ab";
    private readonly List<ChildProcess> _services = [];

    public IReadOnlyList<ChildProcess> Services => _services;
    private readonly IDictionary<string, string?> _apiSettings;
    private ConnectionMultiplexer? _redisClient;

    private PipelineHost(RedisServer redis, RabbitMqServer rabbit, IDictionary<string, string?> apiSettings)
    {
        Redis = redis;
        Rabbit = rabbit;
        _apiSettings = apiSettings;
    }

    public RedisServer Redis { get; }

    public RabbitMqServer Rabbit { get; }

    public ChildProcess Api { get; private set; } = null!;

    public int ApiPort { get; private set; }

    public HttpClient Anonymous { get; private set; } = null!;

    public HttpClient Submit { get; private set; } = null!;

    public HttpClient Admin { get; private set; } = null!;

    public static async Task<PipelineHost> StartAsync(IDictionary<string, string?>? apiSettings = null)
    {
        var redisTask = RedisServer.StartAsync();
        // Fresh brokers for every host, as before; the RabbitMQ node was booted while the previous class ran.
        var rabbitTask = RabbitMqServer.StartOrTakeSpareAsync();
        var host = new PipelineHost(await redisTask, await rabbitTask, apiSettings ?? new Dictionary<string, string?>());
        await host.StartApiAsync();
        return host;
    }

    private Dictionary<string, string?> BrokerSettings() => new()
    {
        ["ConnectionStrings__redis"] = Redis.ConnectionString,
        ["ConnectionStrings__rabbitmq"] = Rabbit.ConnectionString,
        ["TestEvents__Enabled"] = "true",
        ["Logging__LogLevel__Default"] = "Warning",
    };

    private async Task StartApiAsync()
    {
        var settings = BrokerSettings();
        settings["Auth__ApiKeys__Submit"] = SubmitKey;
        settings["Auth__ApiKeys__Admin"] = AdminKey;
        settings["LaneMonitor__RabbitMqPrometheusUrl"] = $"http://127.0.0.1:{Rabbit.PrometheusPort}";
        settings["LaneMonitor__SampleInterval"] = "00:00:00.250";
        settings["Downstream__AllowedHosts__0"] = "127.0.0.1";
        foreach (var (key, value) in _apiSettings)
        {
            settings[key] = value;
        }

        Api = ServiceProcess.Start("Producer.Api", settings, out var port);
        ApiPort = port;
        _services.Add(Api);
        await ServiceProcess.WaitUntilReadyAsync(Api, port, TimeSpan.FromSeconds(90));
        Anonymous = Client(null);
        Submit = Client(SubmitKey);
        Admin = Client(AdminKey);
    }

    public HttpClient Client(string? apiKey)
    {
        // The handler's own 30 s deadline, reported with the API's last output; HttpClient's own timeout stays out of its way.
        var client = new HttpClient(new UnansweredRequestReport(Api, TimeSpan.FromSeconds(30)))
        {
            BaseAddress = new Uri($"http://127.0.0.1:{ApiPort}"),
            Timeout = TimeSpan.FromSeconds(35),
        };
        if (apiKey is not null)
        {
            client.DefaultRequestHeaders.Add("X-Api-Key", apiKey);
        }

        return client;
    }

    public async Task<(ChildProcess Process, int Port)> StartReceiverAsync()
    {
        var receiver = ServiceProcess.Start("Downstream.Receiver", new Dictionary<string, string?> { ["Logging__LogLevel__Default"] = "Warning" }, out var port);
        _services.Add(receiver);
        await ServiceProcess.WaitUntilReadyAsync(receiver, port, TimeSpan.FromSeconds(60));
        return (receiver, port);
    }

    public async Task<ChildProcess> StartCpuWorkerAsync(IDictionary<string, string?>? extra = null)
    {
        var settings = BrokerSettings();
        settings["CpuLane__Handlers"] = "2";
        foreach (var (key, value) in extra ?? new Dictionary<string, string?>())
        {
            settings[key] = value;
        }

        var worker = ServiceProcess.Start("Worker.Cpu", settings, out var port);
        _services.Add(worker);
        await ServiceProcess.WaitUntilReadyAsync(worker, port, TimeSpan.FromSeconds(60));
        return worker;
    }

    public async Task<ChildProcess> StartIoWorkerAsync(int receiverPort, IDictionary<string, string?>? extra = null)
    {
        var settings = BrokerSettings();
        settings["Downstream__BaseAddress"] = $"http://127.0.0.1:{receiverPort}";
        settings["Downstream__AllowedHosts__0"] = "127.0.0.1";
        foreach (var (key, value) in extra ?? new Dictionary<string, string?>())
        {
            settings[key] = value;
        }

        var worker = ServiceProcess.Start("Worker.Io", settings, out var port);
        _services.Add(worker);
        await ServiceProcess.WaitUntilReadyAsync(worker, port, TimeSpan.FromSeconds(60));
        return worker;
    }

    private async Task<IDatabase> RedisDbAsync()
    {
        if (_redisClient is not { IsConnected: true })
        {
            _redisClient?.Dispose();
            _redisClient = await Redis.ConnectAsync();
        }

        return _redisClient.GetDatabase();
    }

    /// <summary>
    /// What the brokers hold: CPU stream entries, I/O queue messages, and every Redis key but the CPU workers' wake-up
    /// streams (<c>events.cpu.wake:*</c>, one per running worker, made at its first read and removed at its stop: they
    /// come and go with workers, not with what the API accepts).
    /// </summary>
    public async Task<BrokerContents> ContentsAsync()
    {
        var db = await RedisDbAsync();
        var stream = await db.StreamLengthAsync("events.cpu");
        // One script: a worker starting or stopping between two commands would make the count one off.
        var keys = (long)await db.ScriptEvaluateAsync("return redis.call('DBSIZE') - #redis.call('KEYS', 'events.cpu.wake:*')");
        var queue = await Rabbit.MessageCountAsync("events-io") ?? 0;
        return new BrokerContents(stream, queue, keys);
    }

    private bool _ioErrorQueueBound;

    /// <summary>
    /// Waits until <c>events-io_error</c> is bound to its exchange. The API declares the exchange, the queue and then
    /// the binding in the background after it answers ready (IoLaneTopologyDeclarer): a test that publishes a dead letter
    /// there with <c>mandatory</c> as soon as the queue exists could otherwise be returned NO_ROUTE (seen in CI). The
    /// binding is durable, so once seen it stays.
    /// </summary>
    public async Task WaitUntilIoErrorQueueIsBoundAsync()
    {
        if (_ioErrorQueueBound)
        {
            return;
        }

        await Eventually.TrueAsync(async () =>
            (await Rabbit.CtlAsync("-q", "list_bindings", "--no-table-headers", "source_name", "destination_name"))
                .Split('\n').Any(line => line.Split('\t', StringSplitOptions.TrimEntries) is ["events-io_error", "events-io_error"]),
            TimeSpan.FromSeconds(60), "the API to bind events-io_error to its exchange", TimeSpan.FromMilliseconds(200));
        _ioErrorQueueBound = true;
    }

    public async Task<JsonElement> WaitForStateAsync(string id, string state, TimeSpan? timeout = null) =>
        await Eventually.ReturnsAsync(
            async () => await Submit.GetFromJsonAsync<JsonElement>($"/events/{id}"),
            s => s.GetProperty("state").GetString() == state,
            timeout ?? TimeSpan.FromSeconds(90),
            $"event {id} to be {state}",
            TimeSpan.FromMilliseconds(200));

    public async ValueTask DisposeAsync()
    {
        Anonymous?.Dispose();
        Submit?.Dispose();
        Admin?.Dispose();
        // The services stop (SIGTERM) side by side, then both brokers: nothing is asserted about a fixture's teardown,
        // and one after the other it cost several seconds per class.
        await Task.WhenAll(_services.Select(service => service.DisposeAsync().AsTask()));
        _redisClient?.Dispose();
        await Task.WhenAll(Rabbit.DisposeAsync().AsTask(), Redis.DisposeAsync().AsTask());
    }
}

public sealed record BrokerContents(long CpuStreamLength, long IoQueueMessages, long RedisKeys);

/// <summary>One API over fresh brokers, no workers: whatever is enqueued stays countable.</summary>
public sealed class ApiOnlyFixture : IAsyncLifetime
{
    public PipelineHost Host { get; private set; } = null!;

    public async Task InitializeAsync() => Host = await PipelineHost.StartAsync();

    public async Task DisposeAsync() => await Host.DisposeAsync();
}

[CollectionDefinition(Name)]
public sealed class ApiOnlyCollection : ICollectionFixture<ApiOnlyFixture>
{
    public const string Name = "API over real brokers, no workers";
}
