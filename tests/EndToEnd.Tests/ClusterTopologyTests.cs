using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Aspire.Hosting.Testing;
using EventPipeline.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using StackExchange.Redis;
using Xunit.Abstractions;

namespace EventPipeline.EndToEnd.Tests;

/// <summary>
/// <c>Brokers:Topology=Cluster</c> from the real AppHost: three RabbitMQ nodes that form one cluster, services that are
/// given every node, and the I/O lane's quorum queue spread over all three; three Worker.Cpu and two Worker.Io
/// replicas (<c>Workers:CpuReplicas</c>, <c>Workers:IoReplicas</c>), of which one each may die without losing an event.
/// </summary>
[Collection(ClusterAppHostCollection.Name)]
public sealed class ClusterTopologyTests(ClusterAppHostFixture fixture, ITestOutputHelper output)
{
    private const int EventsPerLane = 300;
    private const int BatchSize = 50;

    [Fact]
    public async Task With_three_cpu_and_two_io_replicas_one_of_each_killed_mid_burst_every_accepted_event_is_processed_once()
    {
        var cpuWorkers = await fixture.RunningInstancesAsync("worker-cpu", 3);
        var ioWorkers = await fixture.RunningInstancesAsync("worker-io", 2);
        var watch = Stopwatch.StartNew();

        // Every batch is submitted in the background, one after the other, while each lane's replica is killed once its
        // lane is under way: the killed replicas held work (PBKDF2 on the CPU lane; a receiver that answers after 3 s on
        // the I/O lane), and the survivors take what is still to come. (Submitting a third first and killing after it
        // proved nothing on a quiet machine: the CPU lane had finished that third before the kill.)
        var cpuIds = new List<string>();
        var ioIds = new List<string>();
        var batches = EventsPerLane / BatchSize;
        // The last CPU batch goes in only after the CPU replica was killed, so that lane cannot be done before the kill.
        // Without this a fast lane could finish every submitted PBKDF2 event before the check below saw 10 of them
        // succeed (CI run of session 15: "Worker.Cpu's lane was done before the kill: nothing to prove").
        var cpuKilled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var submitting = Task.Run(async () =>
        {
            for (var batch = 0; batch < batches; batch++)
            {
                if (batch == batches - 1)
                {
                    await cpuKilled.Task.WaitAsync(TimeSpan.FromSeconds(120));
                }

                var cpu = await SubmitBatchAsync(Enumerable.Range(0, BatchSize).Select(i =>
                    (object)new { type = "hash.pbkdf2", payload = new { data = $"replica {batch}-{i}", iterations = 50_000 } }));
                lock (cpuIds)
                {
                    cpuIds.AddRange(cpu);
                }

                var io = await SubmitBatchAsync(Enumerable.Range(0, BatchSize).Select(i =>
                    (object)new { type = "webhook.post", payload = new { replica = $"{batch}-{i}", simulate = new { delayMs = 3000 } } }));
                lock (cpuIds)
                {
                    ioIds.AddRange(io);
                }
            }
        });
        List<string> Snapshot(List<string> ids)
        {
            lock (cpuIds)
            {
                return [.. ids];
            }
        }

        await using var redis = await ConnectionMultiplexer.ConnectAsync((await fixture.App.GetConnectionStringAsync("redis"))!);
        var db = redis.GetDatabase();
        // Each lane's replica dies once its lane is under way and not done: 10 CPU events succeeded; 10 I/O events
        // at the receiver (whose answers take 3 s, so the replicas hold unacknowledged deliveries).
        async Task<string> KillCpuReplicaAsync()
        {
            try
            {
                return await KillOnceUnderWayAsync(() => CountSucceededAsync(db, Snapshot(cpuIds)), () => CountSucceededAsync(db, Snapshot(cpuIds)), EventsPerLane, cpuWorkers[1], "Worker.Cpu");
            }
            finally
            {
                cpuKilled.TrySetResult();
            }
        }

        var kills = await Task.WhenAll(
            KillCpuReplicaAsync(),
            KillOnceUnderWayAsync(async () => (await DeliveriesAsync(Snapshot(ioIds))).Values.Count(c => c > 0), () => CountSucceededAsync(db, Snapshot(ioIds)), EventsPerLane, ioWorkers[0], "Worker.Io"));
        output.WriteLine($"kill -9 at {watch.Elapsed.TotalSeconds:F1} s: {string.Join("; ", kills)}");
        await submitting;

        output.WriteLine($"all {cpuIds.Count + ioIds.Count} accepted at {watch.Elapsed.TotalSeconds:F1} s");

        // The dead CPU replica's pending entries go to the others after CpuLane:ClaimTimeout (10 s here); the dead I/O
        // replica's unacknowledged messages return to the quorum queue at once.
        await Eventually.TrueAsync(async () => await CountSucceededAsync(db, cpuIds) == cpuIds.Count, TimeSpan.FromSeconds(120),
            $"all {cpuIds.Count} CPU events to succeed", TimeSpan.FromMilliseconds(500));
        try
        {
            await Eventually.ReturnsAsync(async () => (await DeliveriesAsync(ioIds)).Values.Count(c => c == 0), missing => missing == 0,
                TimeSpan.FromSeconds(120), $"all {ioIds.Count} I/O events to be delivered (last value: how many are not)", TimeSpan.FromMilliseconds(500));
        }
        catch (TimeoutException)
        {
            var missing = (await DeliveriesAsync(ioIds)).Where(d => d.Value == 0).Select(d => d.Key).ToList();
            var states = await Task.WhenAll(missing.Select(id => db.HashGetAsync($"event:{id}", "state")));
            output.WriteLine($"not delivered at {watch.Elapsed.TotalSeconds:F1} s: {missing.Count} of {ioIds.Count}, states: " +
                             string.Join(", ", states.GroupBy(st => st.ToString()).Select(g => $"{g.Key} {g.Count()}")) + $"; e.g. {string.Join(' ', missing.Take(5))}");
            throw;
        }
        output.WriteLine($"all done at {watch.Elapsed.TotalSeconds:F1} s");

        // Processed once: a CPU success is recorded once ("completions"); every I/O event ends succeeded. The receiver
        // may see a delivery twice (the killed replica's unacknowledged ones, sent again: at-least-once, made harmless by
        // the Idempotency-Key) — counted, not failed.
        var completions = await Task.WhenAll(cpuIds.Select(id => db.HashGetAsync($"event:{id}", "completions")));
        Assert.All(completions, c => Assert.Equal(1, (long)c));
        var ioStates = await Task.WhenAll(ioIds.Select(id => db.HashGetAsync($"event:{id}", "state")));
        Assert.All(ioStates, state => Assert.Equal("succeeded", state.ToString()));
        var deliveries = await DeliveriesAsync(ioIds);
        output.WriteLine($"I/O deliveries: {deliveries.Values.Sum()} for {ioIds.Count} events; delivered more than once: {deliveries.Values.Count(c => c > 1)}");
    }

    /// <summary>
    /// Submits a batch under an <c>Idempotency-Key</c> and, as the API asks, sends it again with the same key while the
    /// answer is 503 (on a loaded machine a replica's acknowledgement can take longer than the API waits) or 409; the
    /// ids are the same on every try. Returns them once the answer is 202 (or 200: all held already).
    /// </summary>
    private async Task<List<string>> SubmitBatchAsync(IEnumerable<object> events)
    {
        var body = JsonSerializer.Serialize(new { events = events.ToArray() });
        var key = "cluster-test-" + Guid.NewGuid().ToString("N");
        var answers = new List<int>();
        var ids = await Eventually.ReturnsAsync(async () =>
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/events/batch") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
            request.Headers.Add("Idempotency-Key", key);
            using var response = await fixture.Api.SendAsync(request);
            answers.Add((int)response.StatusCode);
            if (response.StatusCode is not (System.Net.HttpStatusCode.Accepted or System.Net.HttpStatusCode.OK))
            {
                Assert.True(response.StatusCode is System.Net.HttpStatusCode.ServiceUnavailable or System.Net.HttpStatusCode.Conflict,
                    $"answered {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
                return null;
            }

            var answer = await response.Content.ReadFromJsonAsync<JsonElement>();
            return answer.GetProperty("events").EnumerateArray().Select(e => e.GetProperty("id").GetString()!).ToList();
        }, found => found is not null, TimeSpan.FromSeconds(60), $"batch {key} to be accepted", TimeSpan.FromMilliseconds(250));
        if (answers.Count > 1)
        {
            output.WriteLine($"batch {key}: answers {string.Join(' ', answers)}");
        }

        return ids!;
    }

    private static async Task<string> KillOnceUnderWayAsync(Func<Task<int>> started, Func<Task<int>> succeeded, int total, ResourceEvent replica, string executable)
    {
        await Eventually.ReturnsAsync(started, n => n >= 10, TimeSpan.FromSeconds(60), $"10 events of {executable}'s lane under way", TimeSpan.FromMilliseconds(50));
        var killed = KillWorkerProcess(replica, executable);
        var done = await succeeded();
        Assert.True(done < total, $"{executable}'s lane was done before the kill: nothing to prove");
        return $"{executable} {killed} with {done} of {total} succeeded";
    }

    private static async Task<int> CountSucceededAsync(IDatabase db, IReadOnlyList<string> ids) =>
        (await Task.WhenAll(ids.Select(id => db.HashGetAsync($"event:{id}", "state")))).Count(s => s == "succeeded");

    private async Task<Dictionary<string, int>> DeliveriesAsync(IReadOnlyList<string> ids)
    {
        using var response = await fixture.Downstream.PostAsJsonAsync("/received/lookup", new { keys = ids });
        response.EnsureSuccessStatusCode();
        var counts = (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("counts");
        return ids.ToDictionary(id => id, id => counts.TryGetProperty(id, out var c) ? c.GetProperty("count").GetInt32() : 0);
    }

    /// <summary>
    /// kill -9 of one replica's worker process: Aspire runs a project as <c>dotnet run</c> (the instance's pid), the
    /// worker is its child. Only that PID, which this AppHost started.
    /// </summary>
    private static int KillWorkerProcess(ResourceEvent instance, string executable)
    {
        var runPid = ClusterAppHostFixture.Pid(instance) ?? throw new InvalidOperationException($"{instance.ResourceId} has no pid");
        var worker = ProcessTree.ChildRunning(runPid, executable);
        Assert.True(worker != 0, $"no {executable} process under pid {runPid} ({instance.ResourceId})");
        using var process = Process.GetProcessById(worker);
        process.Kill();
        return worker;
    }

    [Fact]
    public async Task Cluster_topology_runs_three_joined_nodes_and_the_io_lane_spans_them()
    {
        var connectionString = (await fixture.App.GetConnectionStringAsync("rabbitmq"))!;
        var nodes = connectionString[(connectionString.LastIndexOf('@') + 1)..].Split(',');
        Assert.Equal(3, nodes.Length);

        // An I/O event goes through the cluster to the receiver.
        var id = (await SubmitBatchAsync([new { type = "webhook.post", payload = new { order = 7 } }])).Single();
        await Eventually.TrueAsync(async () =>
            (await fixture.Api.GetFromJsonAsync<JsonElement>($"/events/{id}")).GetProperty("state").GetString() == "succeeded",
            TimeSpan.FromSeconds(60), $"event {id} to succeed");

        // Asked through rabbitmq-0's management API: three running members, and the lane queue on all three.
        using var management = new HttpClient { BaseAddress = fixture.App.GetEndpoint("rabbitmq-0", "management") };
        management.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic",
            Convert.ToBase64String(Encoding.UTF8.GetBytes($"eventpipeline:{fixture.RabbitPassword}")));
        var running = (await management.GetFromJsonAsync<JsonElement>("/api/nodes?columns=name,running")).EnumerateArray()
            .Where(n => n.GetProperty("running").GetBoolean()).Select(n => n.GetProperty("name").GetString()).ToList();
        Assert.Equal(["eventpipeline-rabbitmq-0@localhost", "eventpipeline-rabbitmq-1@localhost", "eventpipeline-rabbitmq-2@localhost"], running.Order());
        var queue = await management.GetFromJsonAsync<JsonElement>("/api/queues/%2F/events-io");
        Assert.Equal(running, queue.GetProperty("members").EnumerateArray().Select(m => m.GetString()).Order());
    }
}

/// <summary>The AppHost with <c>Brokers:Topology=Cluster</c>, brokers as local executables in a temp directory.</summary>
public sealed class ClusterAppHostFixture : IAsyncLifetime
{
    private readonly ScratchDirectory _data = new("ep-e2e-cluster");
    private DistributedApplication? _app;

    public DistributedApplication App => _app ?? throw new InvalidOperationException("not started");

    public HttpClient Api { get; private set; } = null!;

    public HttpClient Downstream { get; private set; } = null!;

    public string RabbitPassword { get; private set; } = "";

    public async Task InitializeAsync()
    {
        var submitKey = "submit-" + Guid.NewGuid().ToString("N");
        var arguments = AppHostArguments.ForTest(_data.Path, submitKey, "admin-" + Guid.NewGuid().ToString("N"), "e2e-cluster");
        arguments.Add("Brokers:Topology=Cluster");
        arguments.Add("Workers:CpuReplicas=3");
        arguments.Add("Workers:IoReplicas=2");
        RabbitPassword = arguments.Single(a => a.StartsWith("Parameters:rabbitmq-password=", StringComparison.Ordinal)).Split('=', 2)[1];
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.AppHost>([.. arguments]);
        builder.Services.AddLogging(logging => logging
            .SetMinimumLevel(LogLevel.Warning)
            .AddFilter("Microsoft.Extensions.Diagnostics.HealthChecks", LogLevel.None));

        // A killed CPU replica's entries are claimed by the others after this long (30 s by default; more than three times
        // CpuLane:BlockTimeout, whose 8 s default is too long for it): keeps the test short.
        builder.CreateResourceBuilder(builder.Resources.OfType<ProjectResource>().Single(r => r.Name == "worker-cpu"))
            .WithEnvironment("CpuLane__ClaimTimeout", "00:00:10")
            .WithEnvironment("CpuLane__BlockTimeout", "00:00:02");

        _app = await builder.BuildAsync();
        using var startup = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        await _app.StartAsync(startup.Token);
        foreach (var resource in new[] { "rabbitmq-0", "rabbitmq-1", "rabbitmq-2", "rabbitmq", "producer-api", "downstream" })
        {
            await _app.ResourceNotifications.WaitForResourceHealthyAsync(resource, startup.Token);
        }

        await RunningInstancesAsync("worker-cpu", 3);
        await RunningInstancesAsync("worker-io", 2);
        Api = _app.CreateHttpClient("producer-api");
        Api.DefaultRequestHeaders.Add("X-Api-Key", submitKey);
        Downstream = _app.CreateHttpClient("downstream");
    }

    /// <summary>
    /// The replicas of <paramref name="resource"/> once <paramref name="count"/> of them run and are healthy. Aspire
    /// finds a replicated resource by name for "any instance" only; each replica is an instance id of its own.
    /// </summary>
    public async Task<IReadOnlyList<ResourceEvent>> RunningInstancesAsync(string resource, int count)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        var instances = new Dictionary<string, ResourceEvent>(StringComparer.Ordinal);
        await foreach (var update in App.ResourceNotifications.WatchAsync(timeout.Token))
        {
            if (update.Resource.Name != resource)
            {
                continue;
            }

            instances[update.ResourceId] = update;
            var ready = instances.Values.Where(e => e.Snapshot.State?.Text == KnownResourceStates.Running
                && e.Snapshot.HealthStatus == Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Healthy && Pid(e) is not null).ToList();
            if (ready.Count >= count)
            {
                return [.. ready.OrderBy(e => e.ResourceId, StringComparer.Ordinal)];
            }
        }

        throw new TimeoutException($"{resource}: fewer than {count} healthy replicas");
    }

    public static int? Pid(ResourceEvent e) =>
        e.Snapshot.Properties.FirstOrDefault(p => p.Name == "executable.pid")?.Value is { } value
        && int.TryParse(Convert.ToString(value, CultureInfo.InvariantCulture), out var pid) ? pid : null;

    public async Task DisposeAsync()
    {
        Api?.Dispose();
        Downstream?.Dispose();
        if (_app is not null)
        {
            await _app.StopAsync();
            await _app.DisposeAsync();
        }

        _data.Dispose();
    }
}

/// <summary>Runs alone, never beside the other AppHost collection: two whole systems at once would starve 2 cores.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ClusterAppHostCollection : ICollectionFixture<ClusterAppHostFixture>
{
    public const string Name = "Running AppHost, RabbitMQ cluster";
}
