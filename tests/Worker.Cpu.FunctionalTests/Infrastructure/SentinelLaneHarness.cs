using System.Net.Http.Json;
using EventPipeline.Shared;
using EventPipeline.Testing;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;

/// <summary>
/// The CPU lane on Redis with Sentinel: a <see cref="RedisSentinelSet"/>, a real Producer.Api and real Worker.Cpu
/// processes that get the Sentinel connection string (<c>serviceName=</c>) exactly as the AppHost's Cluster mode gives
/// it, and the test's own client, which follows failovers the same way.
/// </summary>
public sealed class SentinelLaneHarness : IAsyncDisposable
{
    private readonly List<ChildProcess> _processes = [];
    private ConnectionMultiplexer? _connection;

    private SentinelLaneHarness(RedisSentinelSet redis) => Redis = redis;

    public RedisSentinelSet Redis { get; }

    public HttpClient Api { get; private set; } = null!;

    public ChildProcess ApiProcess { get; private set; } = null!;

    public IReadOnlyList<ChildProcess> Workers => [.. _processes.Where(p => p.Name == "Worker.Cpu")];

    public IDatabase Db => (_connection ?? throw new InvalidOperationException("not started")).GetDatabase();

    public EventStatusStore Statuses { get; private set; } = null!;

    public static async Task<SentinelLaneHarness> StartAsync(RabbitMqServer rabbit, int replicaAcks, int workers)
    {
        var lane = new SentinelLaneHarness(await RedisSentinelSet.StartAsync());
        try
        {
            lane._connection = await lane.Redis.ConnectAsync();
            lane.Statuses = new EventStatusStore(lane._connection, Options.Create(new StatusOptions()));
            await Task.WhenAll([lane.StartApiAsync(rabbit, replicaAcks), .. Enumerable.Range(0, workers).Select(_ => lane.StartWorkerAsync())]);
            return lane;
        }
        catch
        {
            await lane.DisposeAsync();
            throw;
        }
    }

    public async Task<ChildProcess> StartWorkerAsync()
    {
        var configuration = new Dictionary<string, string?>(CpuLaneHarness.FastLane)
        {
            ["ConnectionStrings__redis"] = Redis.ConnectionString,
            ["Logging__LogLevel__Default"] = "Information",
            ["Logging__LogLevel__Microsoft"] = "Warning",
            ["Logging__LogLevel__StackExchange"] = "Warning",
        };
        var worker = ServiceProcess.Start("Worker.Cpu", configuration, out var port);
        lock (_processes)
        {
            _processes.Add(worker);
        }

        await ServiceProcess.WaitUntilReadyAsync(worker, port, TimeSpan.FromSeconds(90));
        return worker;
    }

    private async Task StartApiAsync(RabbitMqServer rabbit, int replicaAcks)
    {
        var submitKey = "submit-" + Guid.NewGuid().ToString("N");
        var api = ServiceProcess.Start("Producer.Api", new Dictionary<string, string?>
        {
            ["ConnectionStrings__redis"] = Redis.ConnectionString,
            ["ConnectionStrings__rabbitmq"] = rabbit.ConnectionString,
            ["Auth__ApiKeys__Submit"] = submitKey,
            ["Auth__ApiKeys__Admin"] = "admin-" + Guid.NewGuid().ToString("N"),
            ["Ingest__RedisReplicaAcks"] = replicaAcks.ToString(),
            ["Logging__LogLevel__Default"] = "Warning",
        }, out var port);
        ApiProcess = api;
        lock (_processes)
        {
            _processes.Add(api);
        }

        await ServiceProcess.WaitUntilReadyAsync(api, port, TimeSpan.FromSeconds(90));
        Api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(30) };
        Api.DefaultRequestHeaders.Add("X-Api-Key", submitKey);
    }

    public Task<HttpResponseMessage> SubmitBatchAsync(IEnumerable<object> events, CancellationToken cancellationToken = default) =>
        Api.PostAsJsonAsync("/events/batch", new { events }, cancellationToken);

    /// <summary>State and recorded successes of many events (pipelined), read from the current primary.</summary>
    public async Task<Dictionary<string, (string? State, long Completions)>> StatesAsync(IReadOnlyCollection<string> ids)
    {
        var batch = Db.CreateBatch();
        var reads = ids.Select(id => (id, batch.HashGetAsync(EventStatusStore.Key(id), ["state", "completions"]))).ToList();
        batch.Execute();
        var states = new Dictionary<string, (string?, long)>(ids.Count);
        foreach (var (id, read) in reads)
        {
            var values = await read;
            states[id] = (values[0].IsNull ? null : values[0].ToString(), values[1].IsNull ? 0 : (long)values[1]);
        }

        return states;
    }

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
