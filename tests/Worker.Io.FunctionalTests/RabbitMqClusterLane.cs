using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using EventPipeline.Testing;
using StackExchange.Redis;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// The I/O lane over a three-node RabbitMQ cluster, all real processes on loopback: the cluster, redis-server,
/// Producer.Api, Downstream.Receiver and Worker.Io, every service given the connection string that names all three
/// nodes. One per test class: the cluster alone takes half a minute to form on a busy machine.
/// </summary>
public sealed class RabbitMqClusterLane : IAsyncLifetime
{
    public static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(120);
    private readonly string _submitKey = "submit-" + Guid.NewGuid().ToString("N");
    private readonly List<ChildProcess> _workers = [];

    public RabbitMqCluster Cluster { get; private set; } = null!;

    public RedisServer Redis { get; private set; } = null!;

    public ConnectionMultiplexer StatusConnection { get; private set; } = null!;

    public ChildProcess Api { get; private set; } = null!;

    public ChildProcess Receiver { get; private set; } = null!;

    public IReadOnlyList<ChildProcess> Workers => _workers;

    public HttpClient ApiClient { get; private set; } = null!;

    public HttpClient ReceiverClient { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        var clusterTask = RabbitMqCluster.StartAsync();
        var redisTask = RedisServer.StartAsync();
        var receiverTask = StartReceiverAsync();
        await Task.WhenAll(clusterTask, redisTask, receiverTask);
        Cluster = await clusterTask;
        Redis = await redisTask;
        StatusConnection = await Redis.ConnectAsync();
        await Task.WhenAll(StartApiAsync(), StartWorkerAsync());

        // The lane's queue is declared on the first publish, while all three nodes run: one member on each.
        var warmUp = Enumerable.Range(0, 20).Select(i => IoLaneHost.NewId($"warm-{i}")).ToList();
        await SubmitUntilHeldAsync(warmUp.Select(id => IoLaneHost.Webhook(id)).ToArray());
        await Eventually.TrueAsync(async () => (await StatesAsync(warmUp)).Values.All(s => s == "succeeded"),
            StartTimeout, "the warm-up events to succeed");
    }

    private async Task StartReceiverAsync()
    {
        Receiver = ServiceProcess.Start("Downstream.Receiver", new Dictionary<string, string?> { ["Logging__LogLevel__Default"] = "Warning" }, out var port);
        ReceiverClient = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(30) };
        await ServiceProcess.WaitUntilReadyAsync(Receiver, port, StartTimeout);
    }

    private async Task StartApiAsync()
    {
        Api = ServiceProcess.Start("Producer.Api", new Dictionary<string, string?>
        {
            ["ConnectionStrings__redis"] = Redis.ConnectionString,
            ["ConnectionStrings__rabbitmq"] = Cluster.ConnectionString,
            ["Auth__ApiKeys__Submit"] = _submitKey,
            ["Auth__ApiKeys__Admin"] = "admin-" + Guid.NewGuid().ToString("N"),
            ["Downstream__AllowedOrigins__0"] = ReceiverClient.BaseAddress!.GetLeftPart(UriPartial.Authority),
            ["Logging__LogLevel__Default"] = "Warning",
        }, out var port);
        ApiClient = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(30) };
        ApiClient.DefaultRequestHeaders.Add("X-Api-Key", _submitKey);
        await ServiceProcess.WaitUntilReadyAsync(Api, port, StartTimeout);
    }

    /// <summary>Starts one more Worker.Io on the cluster and waits until it is ready.</summary>
    public async Task<ChildProcess> StartWorkerAsync()
    {
        var configuration = new Dictionary<string, string?>(IoLaneHost.TestWorkerDefaults)
        {
            ["ConnectionStrings__redis"] = Redis.ConnectionString,
            ["ConnectionStrings__rabbitmq"] = Cluster.ConnectionString,
            ["Downstream__BaseAddress"] = ReceiverClient.BaseAddress!.ToString(),
            ["Downstream__PermitsPerSecond"] = "20000",
            ["Logging__LogLevel__EventPipeline"] = "Warning",
        };
        var worker = ServiceProcess.Start("Worker.Io", configuration, out var port);
        _workers.Add(worker);
        await ServiceProcess.WaitUntilReadyAsync(worker, port, StartTimeout);
        return worker;
    }

    /// <summary>Brings every killed node back (a test that failed half-way must not leave the next one a broken cluster).</summary>
    public async Task EnsureAllNodesRunAsync()
    {
        foreach (var node in Cluster.Nodes.Where(n => !n.IsRunning))
        {
            await Cluster.RestartAsync(node.Index);
        }

        await Cluster.WaitUntilAllRunningAsync();
    }

    /// <summary>
    /// Submits one batch with its own Idempotency-Key until the API answers 202, retrying after every 503, 409 or
    /// timeout with the same key and body (the retry gets the same ids and publishes what is not yet held).
    /// </summary>
    public Task SubmitUntilHeldAsync(JsonObject[] batch, SubmissionLog? log = null) =>
        (log ?? new SubmissionLog()).SendAsync(ApiClient, batch, StartTimeout);

    /// <summary>The state of each event, read straight from its status hash in Redis.</summary>
    public async Task<Dictionary<string, string?>> StatesAsync(IReadOnlyCollection<string> ids)
    {
        var db = StatusConnection.GetDatabase();
        var states = await Task.WhenAll(ids.Select(async id => (id, state: (string?)await db.HashGetAsync($"event:{id}", "state"))));
        return states.ToDictionary(s => s.id, s => s.state);
    }

    /// <summary>How often the receiver accepted each key (the event id is the Idempotency-Key).</summary>
    public async Task<Dictionary<string, int>> DeliveriesAsync(IReadOnlyCollection<string> ids)
    {
        using var response = await ReceiverClient.PostAsJsonAsync("/received/lookup", new { keys = ids.ToArray() });
        response.EnsureSuccessStatusCode();
        var json = await response.Content.ReadFromJsonAsync<JsonElement>();
        return json.GetProperty("counts").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetProperty("count").GetInt32());
    }

    public async Task DisposeAsync()
    {
        foreach (var process in _workers.Append(Api).Append(Receiver))
        {
            if (process is not null)
            {
                await process.DisposeAsync();
            }
        }

        ApiClient?.Dispose();
        ReceiverClient?.Dispose();
        StatusConnection?.Dispose();
        if (Redis is not null)
        {
            await Redis.DisposeAsync();
        }

        if (Cluster is not null)
        {
            await Cluster.DisposeAsync();
        }
    }
}

/// <summary>
/// What a client saw while submitting: which ids the API said it holds (a 202, a 200 naming them all as already held,
/// or a 503's <c>heldIds</c>), every
/// answer with its time, and the 503s' Retry-After headers.
/// </summary>
public sealed class SubmissionLog
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    public ConcurrentDictionary<string, TimeSpan> Held { get; } = new();

    public ConcurrentQueue<Answer> Answers { get; } = new();

    public TimeSpan Now => _clock.Elapsed;

    public sealed record Answer(TimeSpan At, int Status, string? RetryAfter, int Events);

    public IEnumerable<Answer> Accepted => Answers.Where(a => a.Status is 202 or 200);

    public async Task SendAsync(HttpClient api, JsonObject[] batch, TimeSpan deadline)
    {
        var key = Guid.NewGuid().ToString("N");
        var body = new JsonObject { ["events"] = new JsonArray([.. batch.Select(e => (JsonNode)e.DeepClone())]) }.ToJsonString();
        var ids = batch.Select(e => e["id"]!.GetValue<string>()).ToList();
        var watch = Stopwatch.StartNew();
        var last = "no answer";
        while (true)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/events/batch") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
            request.Headers.Add("Idempotency-Key", key);
            try
            {
                using var response = await api.SendAsync(request);
                var status = (int)response.StatusCode;
                Answers.Enqueue(new Answer(Now, status, response.Headers.RetryAfter?.ToString(), ids.Count));
                // 200: every event of the batch was already held (an earlier try was confirmed after its answer
                // said otherwise, or timed out on the client): the API names them as duplicates of themselves.
                if (response.StatusCode is HttpStatusCode.Accepted or HttpStatusCode.OK)
                {
                    foreach (var id in ids)
                    {
                        Held.TryAdd(id, Now);
                    }

                    return;
                }

                if (status == 503)
                {
                    var problem = await response.Content.ReadFromJsonAsync<JsonElement>();
                    last = $"503 {problem}";
                    if (problem.TryGetProperty("heldIds", out var held) && held.ValueKind == JsonValueKind.Array)
                    {
                        foreach (var id in held.EnumerateArray())
                        {
                            Held.TryAdd(id.GetString()!, Now);
                        }
                    }
                }
                else if (status == 409)
                {
                    last = "409 (the same key still in flight)";
                }
                else
                {
                    throw new InvalidOperationException($"POST /events/batch answered {status}: {await response.Content.ReadAsStringAsync()}");
                }
            }
            catch (TaskCanceledException)
            {
                Answers.Enqueue(new Answer(Now, 0, null, ids.Count));
                last = "client timeout";
            }

            if (watch.Elapsed > deadline)
            {
                throw new TimeoutException($"a batch of {ids.Count} was not accepted within {deadline}; last answer: {last}");
            }

            await Task.Delay(50); // a client's short back-off; a broker timeout already took seconds
        }
    }

    /// <summary>Sends the batches with a few requests in flight at once, as a busy client does.</summary>
    public Task SendAllAsync(HttpClient api, IReadOnlyList<JsonObject[]> batches, int parallelism, TimeSpan deadline) =>
        Parallel.ForEachAsync(batches, new ParallelOptions { MaxDegreeOfParallelism = parallelism },
            async (batch, _) => await SendAsync(api, batch, deadline));

    /// <summary>The longest stretch between two 202s completed within the window: the time without service.</summary>
    public TimeSpan LongestGapBetweenAccepts(TimeSpan from, TimeSpan to)
    {
        var times = Accepted.Select(a => a.At).Where(t => t >= from && t <= to).Order().ToList();
        var gaps = times.Zip(times.Skip(1), (a, b) => b - a).Append(times.Count > 0 ? times[0] - from : to - from);
        return gaps.Max();
    }
}
