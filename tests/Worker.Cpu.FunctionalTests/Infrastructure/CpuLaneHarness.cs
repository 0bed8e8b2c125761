using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using EventPipeline.Contracts;
using EventPipeline.Shared;
using EventPipeline.Testing;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;

/// <summary>
/// One test's CPU lane: its own redis-server (AOF everysec), any number of real Worker.Cpu processes and, when asked,
/// a real Producer.Api process. Events enter either through the API or through <see cref="EnqueueAsync"/>, which
/// writes exactly what the API writes (status <c>accepted</c> + XADD in one MULTI/EXEC).
/// </summary>
public sealed class CpuLaneHarness : IAsyncDisposable
{
    /// <summary>Short timeouts so crash recovery happens within a test's patience; every value is what a user could set.</summary>
    public static readonly IReadOnlyDictionary<string, string?> FastLane = new Dictionary<string, string?>
    {
        ["CpuLane__ClaimTimeout"] = "00:00:04",
        ["CpuLane__ClaimInterval"] = "00:00:01",
        ["CpuLane__BlockTimeout"] = "00:00:01",
        ["CpuLane__RetryBaseDelay"] = "00:00:00.200",
        ["CpuLane__RetryMaxDelay"] = "00:00:01",
        ["CpuLane__DrainTimeout"] = "00:00:15",
    };

    private readonly List<ChildProcess> _processes = [];
    private ConnectionMultiplexer? _connection;

    private CpuLaneHarness(RedisServer redis) => Redis = redis;

    public RedisServer Redis { get; }

    public RabbitMqServer? RabbitMq { get; private set; }

    public IDatabase Db => (_connection ?? throw new InvalidOperationException("not started")).GetDatabase();

    public EventStatusStore Statuses { get; private set; } = null!;

    public HttpClient? Api { get; private set; }

    public ChildProcess? ApiProcess { get; private set; }

    public string SubmitKey { get; } = "submit-" + Guid.NewGuid().ToString("N");

    public string AdminKey { get; } = "admin-" + Guid.NewGuid().ToString("N");

    public static async Task<CpuLaneHarness> StartAsync()
    {
        var harness = new CpuLaneHarness(await RedisServer.StartAsync());
        await harness.ConnectAsync();
        return harness;
    }

    /// <summary>(Re)connects the test's own client, e.g. after the server was restarted.</summary>
    public async Task ConnectAsync()
    {
        if (_connection is not null)
        {
            await _connection.DisposeAsync();
        }

        var options = ConfigurationOptions.Parse(Redis.ConnectionString);
        options.AbortOnConnectFail = false;
        options.AsyncTimeout = 20_000;
        options.SyncTimeout = 20_000;
        _connection = await ConnectionMultiplexer.ConnectAsync(options);
        Statuses = new EventStatusStore(_connection, Options.Create(new StatusOptions()));
    }

    /// <summary>Starts a Worker.Cpu process (test events on, <see cref="FastLane"/> timeouts, plus overrides) and waits until it is ready.</summary>
    public async Task<ChildProcess> StartWorkerAsync(IDictionary<string, string?>? overrides = null, bool waitUntilReady = true)
    {
        var configuration = new Dictionary<string, string?>(FastLane)
        {
            ["ConnectionStrings__redis"] = Redis.ConnectionString,
            ["TestEvents__Enabled"] = "true",
            ["Logging__LogLevel__Default"] = "Information",
            ["Logging__LogLevel__Microsoft"] = "Warning",
            ["Logging__LogLevel__StackExchange"] = "Warning",
        };
        if (RabbitMq is not null)
        {
            configuration["ConnectionStrings__rabbitmq"] = RabbitMq.ConnectionString;
        }

        foreach (var (key, value) in overrides ?? new Dictionary<string, string?>())
        {
            configuration[key] = value;
        }

        var worker = ServiceProcess.Start("Worker.Cpu", configuration, out var port);
        _processes.Add(worker);
        if (waitUntilReady)
        {
            await ServiceProcess.WaitUntilReadyAsync(worker, port, TimeSpan.FromSeconds(90));
        }

        return worker;
    }

    /// <summary>Starts RabbitMQ-backed Producer.Api (the I/O lane's broker comes from the shared fixture).</summary>
    public async Task StartApiAsync(SharedRabbitMq rabbit)
    {
        await UseRabbitMqAsync(rabbit);
        ApiProcess = ServiceProcess.Start("Producer.Api", new Dictionary<string, string?>
        {
            ["ConnectionStrings__redis"] = Redis.ConnectionString,
            ["ConnectionStrings__rabbitmq"] = RabbitMq!.ConnectionString,
            ["Auth__ApiKeys__Submit"] = SubmitKey,
            ["Auth__ApiKeys__Admin"] = AdminKey,
            ["TestEvents__Enabled"] = "true",
            ["Logging__LogLevel__Default"] = "Warning",
        }, out var port);
        _processes.Add(ApiProcess);
        await ServiceProcess.WaitUntilReadyAsync(ApiProcess, port, TimeSpan.FromSeconds(90));
        Api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(60) };
        Api.DefaultRequestHeaders.Add("X-Api-Key", SubmitKey);
    }

    public async Task UseRabbitMqAsync(SharedRabbitMq rabbit) => RabbitMq ??= await rabbit.GetAsync();

    /// <summary>Writes events exactly as the API's CPU-lane publisher does: status and XADD in one transaction.</summary>
    public async Task EnqueueAsync(params (string Id, string Type, object Payload)[] events)
    {
        var acceptedAt = DateTimeOffset.UtcNow;
        var transaction = Db.CreateTransaction();
        var writes = new List<Task>();
        foreach (var (id, type, payload) in events)
        {
            writes.Add(Statuses.MarkAcceptedAsync(transaction, id, type, Lanes.Cpu, acceptedAt));
            writes.Add(transaction.StreamAddAsync(CpuLaneStreams.Stream,
                CpuLaneStreams.NewEntry(id, type, JsonSerializer.Serialize(payload), acceptedAt, null)));
        }

        Assert.True(await transaction.ExecuteAsync(), "the enqueue transaction was not committed");
        await Task.WhenAll(writes);
    }

    /// <summary>POST /events/batch; returns the ids on 202, null on any other answer (e.g. 503 while a broker is down).</summary>
    public async Task<IReadOnlyList<string>?> SubmitBatchAsync(IEnumerable<object> events)
    {
        var api = Api ?? throw new InvalidOperationException("the API was not started");
        using var response = await api.PostAsJsonAsync("/events/batch", new { events });
        if (response.StatusCode != HttpStatusCode.Accepted)
        {
            return null;
        }

        var body = await response.Content.ReadFromJsonAsync<JsonElement>();
        return [.. body.GetProperty("events").EnumerateArray().Select(e => e.GetProperty("id").GetString()!)];
    }

    public async Task<Dictionary<string, string>> StatusAsync(string id) =>
        (await Db.HashGetAllAsync(EventStatusStore.Key(id))).ToDictionary(e => e.Name.ToString(), e => e.Value.ToString());

    public Task<Dictionary<string, string>> WaitForStateAsync(string id, string state, TimeSpan timeout) =>
        Eventually.ReturnsAsync(() => StatusAsync(id), s => s.GetValueOrDefault("state") == state, timeout,
            $"event {id} to be {state}", TimeSpan.FromMilliseconds(50));

    /// <summary>States of many events at once (pipelined), keyed by id.</summary>
    public async Task<Dictionary<string, (string? State, long Completions)>> StatesAsync(IReadOnlyCollection<string> ids) =>
        (await ReadAsync(ids)).ToDictionary(s => s.Key, s => (s.Value.State, s.Value.Completions));

    /// <summary>State, recorded successes and result of many events at once (pipelined), keyed by id.</summary>
    public async Task<Dictionary<string, (string? State, long Completions, string? Result)>> ReadAsync(IReadOnlyCollection<string> ids)
    {
        var batch = Db.CreateBatch();
        var reads = ids.Select(id => (id, batch.HashGetAsync(EventStatusStore.Key(id), ["state", "completions", "result"]))).ToList();
        batch.Execute();
        var states = new Dictionary<string, (string?, long, string?)>(ids.Count);
        foreach (var (id, read) in reads)
        {
            var values = await read;
            states[id] = (values[0].IsNull ? null : values[0].ToString(), values[1].IsNull ? 0 : (long)values[1],
                values[2].IsNull ? null : values[2].ToString());
        }

        return states;
    }

    public async Task<int> CountInStateAsync(IReadOnlyCollection<string> ids, string state) =>
        (await StatesAsync(ids)).Values.Count(s => s.State == state);

    public async Task<StreamEntry[]> DeadLettersAsync() => await Db.StreamRangeAsync(CpuLaneStreams.DeadLetters);

    public async ValueTask DisposeAsync()
    {
        Api?.Dispose();
        await Task.WhenAll(_processes.Select(p => p.DisposeAsync().AsTask()));

        if (_connection is not null)
        {
            await _connection.DisposeAsync();
        }

        await Redis.DisposeAsync();
    }
}
