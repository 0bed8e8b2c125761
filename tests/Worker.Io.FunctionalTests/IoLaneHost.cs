using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using EventPipeline.Testing;
using RabbitMQ.Client;
using StackExchange.Redis;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// The I/O lane as real processes on loopback: rabbitmq-server, redis-server, Producer.Api, Downstream.Receiver and
/// Worker.Io (which tests kill, stop and restart by PID). One per test class or collection: starting it costs seconds.
/// </summary>
public sealed class IoLaneHost : IAsyncDisposable
{
    public const string QueueName = "events-io";
    public const string ErrorQueueName = "events-io_error";
    public static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(120);

    private readonly string _submitKey = "submit-" + Guid.NewGuid().ToString("N");
    private readonly string _adminKey = "admin-" + Guid.NewGuid().ToString("N");
    private IDictionary<string, string?> _workerSettings = new Dictionary<string, string?>();

    private IoLaneHost(RabbitMqServer rabbit, RedisServer redis, ConnectionMultiplexer statusConnection)
    {
        Rabbit = rabbit;
        Redis = redis;
        StatusConnection = statusConnection;
    }

    public RabbitMqServer Rabbit { get; }

    public RedisServer Redis { get; }

    public ConnectionMultiplexer StatusConnection { get; }

    public ChildProcess? Api { get; private set; }

    public ChildProcess? Receiver { get; private set; }

    public ChildProcess? Worker { get; private set; }

    public ChildProcess? CpuWorker { get; private set; }

    public HttpClient ApiClient { get; private set; } = null!;

    public HttpClient ReceiverClient { get; private set; } = null!;

    /// <summary>Settings every worker of the tests gets: short retry intervals, test events on.</summary>
    public static IReadOnlyDictionary<string, string?> TestWorkerDefaults { get; } = new Dictionary<string, string?>
    {
        ["IoLane__MaxAttempts"] = "5",
        ["IoLane__RetryMinInterval"] = "00:00:00.100",
        ["IoLane__RetryMaxInterval"] = "00:00:01",
        ["IoLane__RetryIntervalDelta"] = "00:00:00.100",
        ["TestEvents__Enabled"] = "true",
        ["Logging__LogLevel__Default"] = "Warning",
        ["Logging__LogLevel__EventPipeline"] = "Information",
    };

    public static async Task<IoLaneHost> StartBrokersAsync()
    {
        // A fresh node for every host, as before; it was booted while the previous class ran.
        var rabbitTask = RabbitMqServer.StartOrTakeSpareAsync();
        var redisTask = RedisServer.StartAsync();
        await Task.WhenAll(rabbitTask, redisTask);
        var redis = await redisTask;
        return new IoLaneHost(await rabbitTask, redis, await redis.ConnectAsync());
    }

    /// <summary>Everything, worker included, ready.</summary>
    public static async Task<IoLaneHost> StartAsync(IDictionary<string, string?>? workerSettings = null)
    {
        var host = await StartBrokersAsync();
        await Task.WhenAll(host.StartReceiverAsync(), host.StartApiAsync(), host.StartWorkerAsync(workerSettings));
        return host;
    }

    public async Task StartReceiverAsync()
    {
        Receiver = ServiceProcess.Start("Downstream.Receiver", new Dictionary<string, string?>
        {
            ["Logging__LogLevel__Default"] = "Warning",
        }, out var port);
        ReceiverClient = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(30) };
        await ServiceProcess.WaitUntilReadyAsync(Receiver, port, StartTimeout);
    }

    /// <summary>Starts Producer.Api; by default an event's <c>target</c> may name the receiver's origin only.</summary>
    public async Task StartApiAsync(IDictionary<string, string?>? settings = null)
    {
        var configuration = new Dictionary<string, string?>
        {
            ["ConnectionStrings__redis"] = Redis.ConnectionString,
            ["ConnectionStrings__rabbitmq"] = Rabbit.ConnectionString,
            ["Auth__ApiKeys__Submit"] = _submitKey,
            ["Auth__ApiKeys__Admin"] = _adminKey,
            ["TestEvents__Enabled"] = "true",
            ["Downstream__AllowedOrigins__0"] = ReceiverClient.BaseAddress!.GetLeftPart(UriPartial.Authority),
            ["Logging__LogLevel__Default"] = "Warning",
        };
        foreach (var (key, value) in settings ?? new Dictionary<string, string?>())
        {
            configuration[key] = value;
        }

        Api = ServiceProcess.Start("Producer.Api", configuration, out var port);
        ApiClient = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(30) };
        ApiClient.DefaultRequestHeaders.Add("X-Api-Key", _submitKey);
        await ServiceProcess.WaitUntilReadyAsync(Api, port, StartTimeout);
    }

    /// <summary>Starts a Worker.Io process (the previous one must have exited) and waits until its bus is ready.</summary>
    public async Task StartWorkerAsync(IDictionary<string, string?>? settings = null, bool waitUntilReady = true)
    {
        if (Worker is { HasExited: false })
        {
            throw new InvalidOperationException($"Worker.Io (pid {Worker.Pid}) is still running");
        }

        if (Worker is not null)
        {
            await Worker.DisposeAsync();
        }

        _workerSettings = settings ?? new Dictionary<string, string?>();
        var configuration = new Dictionary<string, string?>(TestWorkerDefaults)
        {
            ["ConnectionStrings__redis"] = Redis.ConnectionString,
            ["ConnectionStrings__rabbitmq"] = Rabbit.ConnectionString,
            ["Downstream__BaseAddress"] = ReceiverClient.BaseAddress!.ToString(),
        };
        foreach (var (key, value) in _workerSettings)
        {
            configuration[key] = value;
        }

        Worker = ServiceProcess.Start("Worker.Io", configuration, out var port);
        if (waitUntilReady)
        {
            await ServiceProcess.WaitUntilReadyAsync(Worker, port, StartTimeout);
        }
    }

    /// <summary>Makes sure a worker with exactly these settings runs (restarting it when needed).</summary>
    public async Task EnsureWorkerAsync(IDictionary<string, string?>? settings = null)
    {
        settings ??= new Dictionary<string, string?>();
        var same = settings.Count == _workerSettings.Count && settings.All(kv => _workerSettings.TryGetValue(kv.Key, out var v) && v == kv.Value);
        if (Worker is { HasExited: false } && same)
        {
            return;
        }

        if (Worker is { HasExited: false })
        {
            await Worker.TerminateAsync(TimeSpan.FromSeconds(60));
        }

        await StartWorkerAsync(settings);
    }

    /// <summary>Starts a Worker.Cpu process on the same brokers (for chained events) and waits until it is ready.</summary>
    public async Task StartCpuWorkerAsync()
    {
        CpuWorker = ServiceProcess.Start("Worker.Cpu", new Dictionary<string, string?>
        {
            ["ConnectionStrings__redis"] = Redis.ConnectionString,
            ["ConnectionStrings__rabbitmq"] = Rabbit.ConnectionString,
            ["CpuLane__Handlers"] = "1",
            ["Logging__LogLevel__Default"] = "Warning",
            ["Logging__LogLevel__EventPipeline"] = "Information",
        }, out var port);
        await ServiceProcess.WaitUntilReadyAsync(CpuWorker, port, StartTimeout);
    }

    /// <summary>
    /// Puts an I/O event straight into <c>events-io</c> in MassTransit's envelope, as any publisher with broker access
    /// could, bypassing the API's validation: what the worker does with it is all its own checks.
    /// </summary>
    public Task PublishDirectAsync(string eventId, string type, JsonObject payload, string? target) =>
        PublishDirectAsync([(eventId, type, payload, target)]);

    /// <summary>Many events straight into <c>events-io</c> on one channel, each confirmed by the broker.</summary>
    public async Task PublishDirectAsync(IReadOnlyList<(string EventId, string Type, JsonObject Payload, string? Target)> events)
    {
        await using var connection = await Rabbit.ConnectAsync();
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        var properties = new BasicProperties { ContentType = "application/vnd.masstransit+json", Persistent = true };
        // All at once, confirms awaited together: the queue fills as fast as the broker takes them.
        await Task.WhenAll(events.Select(async e =>
        {
            var (eventId, type, payload, target) = e;
            var envelope = new JsonObject
            {
                ["messageId"] = Guid.NewGuid().ToString(),
                ["messageType"] = new JsonArray("urn:message:EventPipeline.Contracts:IoEventSubmitted"),
                ["message"] = new JsonObject
                {
                    ["eventId"] = eventId,
                    ["type"] = type,
                    ["payload"] = payload.ToJsonString(),
                    ["acceptedAt"] = DateTimeOffset.UtcNow.ToString("O"),
                    ["target"] = target,
                },
                ["sentTime"] = DateTimeOffset.UtcNow.ToString("O"),
                ["headers"] = new JsonObject(),
            };
            await channel.BasicPublishAsync("", QueueName, mandatory: true, properties, Encoding.UTF8.GetBytes(envelope.ToJsonString()));
        }));
    }

    public static string NewId(string prefix) => $"{prefix}-{Guid.NewGuid():N}";

    public static JsonObject Webhook(string id, int? delayMs = null, int? status = null, int? failTimes = null)
    {
        var simulate = new JsonObject();
        if (delayMs is { } d) simulate["delayMs"] = d;
        if (status is { } s) simulate["status"] = s;
        if (failTimes is { } f) simulate["failTimes"] = f;
        var payload = new JsonObject { ["orderId"] = id };
        if (simulate.Count > 0) payload["simulate"] = simulate;
        return new JsonObject { ["id"] = id, ["type"] = "webhook.post", ["payload"] = payload };
    }

    public async Task<HttpResponseMessage> SubmitAsync(JsonObject evt, CancellationToken cancellationToken = default) =>
        await ApiClient.PostAsync("/events", new StringContent(evt.ToJsonString(), Encoding.UTF8, "application/json"), cancellationToken);

    public async Task SubmitAcceptedAsync(JsonObject evt)
    {
        using var response = await SubmitAsync(evt);
        Assert.True(response.StatusCode == HttpStatusCode.Accepted, $"POST /events answered {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
    }

    /// <summary>Submits in batches of at most 1,000 (the API's limit); every batch must be accepted.</summary>
    public async Task SubmitBatchesAsync(IReadOnlyList<JsonObject> events)
    {
        foreach (var chunk in events.Chunk(1000))
        {
            var body = new JsonObject { ["events"] = new JsonArray(chunk.Select(e => (JsonNode)e.DeepClone()).ToArray()) };
            using var response = await ApiClient.PostAsync("/events/batch", new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"));
            Assert.True(response.StatusCode == HttpStatusCode.Accepted, $"POST /events/batch answered {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        }
    }

    public sealed record Received(int Count, int Arrivals);

    /// <summary>How often the receiver accepted (2xx) and saw each key.</summary>
    public async Task<IReadOnlyDictionary<string, Received>> ReceivedAsync(IEnumerable<string> keys)
    {
        using var response = await ReceiverClient.PostAsJsonAsync("/received/lookup", new { keys = keys.ToArray() });
        response.EnsureSuccessStatusCode();
        var json = await response.Content.ReadFromJsonAsync<JsonElement>();
        return json.GetProperty("counts").EnumerateObject().ToDictionary(
            p => p.Name, p => new Received(p.Value.GetProperty("count").GetInt32(), p.Value.GetProperty("arrivals").GetInt32()));
    }

    public async Task<long[]> ArrivalTimesAsync(long sinceUnixMs)
    {
        var json = await ReceiverClient.GetFromJsonAsync<JsonElement>($"/received/arrivals?sinceMs={sinceUnixMs}");
        return json.GetProperty("arrivals").EnumerateArray().Select(e => e.GetInt64()).ToArray();
    }

    public sealed record Status(string? State, int Attempts, string? Error, long? AcceptedAt, long? FinishedAt);

    /// <summary>The status hash the API and the worker write (<c>event:{id}</c>), read straight from Redis.</summary>
    public async Task<Status> StatusAsync(string id)
    {
        var fields = (await StatusConnection.GetDatabase().HashGetAllAsync($"event:{id}")).ToDictionary(e => e.Name.ToString(), e => e.Value.ToString());
        return new Status(
            fields.GetValueOrDefault("state"),
            int.TryParse(fields.GetValueOrDefault("attempts"), out var a) ? a : 0,
            fields.GetValueOrDefault("error"),
            long.TryParse(fields.GetValueOrDefault("acceptedAt"), out var acc) ? acc : null,
            long.TryParse(fields.GetValueOrDefault("finishedAt"), out var fin) ? fin : null);
    }

    public async Task<Dictionary<string, Status>> StatusesAsync(IReadOnlyCollection<string> ids)
    {
        var results = await Task.WhenAll(ids.Select(async id => (id, status: await StatusAsync(id))));
        return results.ToDictionary(r => r.id, r => r.status);
    }

    public async Task WaitForStateAsync(string id, string state, TimeSpan timeout) =>
        await Eventually.TrueAsync(async () => (await StatusAsync(id)).State == state, timeout, $"event {id} to be {state}");

    public sealed record ErrorQueueMessage(string? EventId, IReadOnlyDictionary<string, string> Headers);

    /// <summary>
    /// Every message in a queue, read with basic.get and left in place (never acknowledged: the channel closes and
    /// they return).
    /// </summary>
    public async Task<IReadOnlyList<ErrorQueueMessage>> PeekQueueAsync(string queue)
    {
        var messages = new List<ErrorQueueMessage>();
        await using var connection = await Rabbit.ConnectAsync();
        await using var channel = await connection.CreateChannelAsync();
        while (await channel.BasicGetAsync(queue, autoAck: false) is { } result)
        {
            var headers = (result.BasicProperties.Headers ?? new Dictionary<string, object?>())
                .ToDictionary(h => h.Key, h => h.Value is byte[] bytes ? Encoding.UTF8.GetString(bytes) : h.Value?.ToString() ?? "");
            string? eventId = null;
            try
            {
                using var body = JsonDocument.Parse(result.Body);
                eventId = body.RootElement.GetProperty("message").GetProperty("eventId").GetString();
            }
            catch (Exception ex) when (ex is JsonException or KeyNotFoundException or InvalidOperationException)
            {
            }

            messages.Add(new ErrorQueueMessage(eventId, headers));
        }

        return messages;
    }

    public async Task<ErrorQueueMessage?> FindInQueueAsync(string queue, string eventId) =>
        (await PeekQueueAsync(queue)).FirstOrDefault(m => m.EventId == eventId);

    public async ValueTask DisposeAsync()
    {
        // Side by side: nothing is asserted about a host's teardown, and one SIGTERM after the other cost seconds each.
        await Task.WhenAll(new[] { CpuWorker, Worker, Api, Receiver }.OfType<ChildProcess>().Select(p => p.DisposeAsync().AsTask()));
        ApiClient?.Dispose();
        ReceiverClient?.Dispose();
        StatusConnection.Dispose();
        await Task.WhenAll(Redis.DisposeAsync().AsTask(), Rabbit.DisposeAsync().AsTask());
    }
}

/// <summary>One shared lane for the tests that can live with each other's leftovers (they use their own event ids).</summary>
public sealed class SharedIoLane : IAsyncLifetime
{
    public IoLaneHost Host { get; private set; } = null!;

    public async Task InitializeAsync() => Host = await IoLaneHost.StartAsync();

    public async Task DisposeAsync() => await Host.DisposeAsync();
}

[CollectionDefinition(Name)]
public sealed class SharedIoLaneCollection : ICollectionFixture<SharedIoLane>
{
    public const string Name = "shared I/O lane";
}
