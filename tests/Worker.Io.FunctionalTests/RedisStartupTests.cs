using EventPipeline.Testing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using StackExchange.Redis;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// A Worker.Io replica that starts while its Redis cannot answer (session 7's CI: one replica timed out on every connect
/// to the Sentinels and delivered nothing). The replica must not take a message before its status store connection
/// serves, and must deliver everything once it does. The lane's Redis is reached through one real Sentinel (the
/// topology of the cluster AppHost); SIGSTOPping the Sentinel makes every connect time out, as in the CI log.
/// </summary>
[Collection(SharedIoLaneCollection.Name)]
public sealed class RedisStartupTests(SharedIoLane lane, ITestOutputHelper output)
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(90);
    private IoLaneHost Host => lane.Host;

    [Fact]
    public async Task Worker_takes_no_message_until_its_redis_answers_and_then_delivers_every_one()
    {
        await using var sentinel = await LoneSentinel.StartAsync(Host.Redis);
        if (Host.Worker is { HasExited: false } running)
        {
            await running.TerminateAsync(TimeSpan.FromSeconds(60));
        }

        // Waiting in the queue before the worker starts: the burst a replica meets when it comes up behind a backlog.
        var ids = Enumerable.Range(0, 60).Select(i => IoLaneHost.NewId($"redis-start-{i}")).ToList();
        await Host.SubmitBatchesAsync(ids.Select(id => IoLaneHost.Webhook(id)).ToList());

        // Its own worker process (not Host.Worker), for its HTTP port: readiness is part of the guarantee.
        var settings = new Dictionary<string, string?>(IoLaneHost.TestWorkerDefaults)
        {
            // A short connect timeout and one try per attempt only so that attempts fail quickly; the failure is the same at
            // the defaults.
            ["ConnectionStrings__redis"] = sentinel.ConnectionString + ",connectTimeout=1000,connectRetry=1",
            ["ConnectionStrings__rabbitmq"] = Host.Rabbit.ConnectionString,
            ["Downstream__BaseAddress"] = Host.ReceiverClient.BaseAddress!.ToString(),
            // What an operator may set: Aspire would then resolve the connection while the host starts, and a resolve
            // that throws (Redis unreachable) stops the host. The lane forces it off.
            ["Aspire__StackExchange__Redis__DisableAutoActivation"] = "false",
            // For MassTransit's "Connected:" line: the sampling below waits until the bus is connected to RabbitMQ.
            ["Logging__LogLevel__MassTransit"] = "Debug",
        };
        await using (var pause = ProcessPause.Of(sentinel.Pid))
        {
            await using var worker = ServiceProcess.Start("Worker.Io", settings, out var port);
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(10) };

            // Either the worker consumes (the failure) or it still waits (the guarantee) after two failed connects, one of
            // them at least logged after its bus connected to RabbitMQ: a worker without the gate would have issued its
            // basic.consume within that attempt (a second), so the sample below cannot come before it on a loaded machine.
            await Eventually.TrueAsync(async () => (await LaneQueueConsumersAsync()) > 0 || FailedConnects(worker) >= 2 && FailedConnectsAfterBusConnected(worker) >= 1,
                Deadline, "Worker.Io to consume from the lane queue or to report two failed connects to its status store, one after its bus connected");
            var consumers = await LaneQueueConsumersAsync();
            var deadLetterConsumers = await QueueConsumersAsync(Delivery.BrokerDeadLetterStatusConsumer.QueueName);
            output.WriteLine($"while the Sentinel was stopped: {consumers} consumers on {IoLaneHost.QueueName}, {deadLetterConsumers} on " +
                $"{Delivery.BrokerDeadLetterStatusConsumer.QueueName}, {FailedConnects(worker)} failed connects logged");
            Assert.True(consumers == 0 && deadLetterConsumers == 0,
                $"Worker.Io consumed from {IoLaneHost.QueueName} ({consumers} consumers) or {Delivery.BrokerDeadLetterStatusConsumer.QueueName} " +
                $"({deadLetterConsumers}) while its status store could not be reached:\n" + string.Join('\n', worker.Output.TakeLast(20)));
            var ready = await ReadyAsync(http);
            Assert.True(ready is not null and not System.Net.HttpStatusCode.OK,
                $"/health/ready answered {ready?.ToString() ?? "nothing within 10 s"} while the status store could not be reached");
            pause.Resume();

            await Eventually.TrueAsync(async () => await ReadyAsync(http) == System.Net.HttpStatusCode.OK, Deadline,
                "Worker.Io to be ready once the Sentinel answers", TimeSpan.FromMilliseconds(200));
            var errorQueueIds = new HashSet<string>();
            await Eventually.TrueAsync(async () =>
            {
                errorQueueIds = (await Host.PeekQueueAsync(IoLaneHost.ErrorQueueName)).Select(m => m.EventId).OfType<string>().Intersect(ids).ToHashSet();
                return errorQueueIds.Count > 0 || (await Host.StatusesAsync(ids)).Values.All(s => s.State == "succeeded");
            }, Deadline, "every event to succeed (or one to reach the error queue) once the Sentinel answers", TimeSpan.FromMilliseconds(500));

            output.WriteLine(string.Join('\n', worker.Output.Where(l => l.Contains("Status store", StringComparison.Ordinal))));
            Assert.True(errorQueueIds.Count == 0,
                $"{errorQueueIds.Count} events went to {IoLaneHost.ErrorQueueName} instead of being delivered:\n" + string.Join('\n', worker.Output.TakeLast(20)));
            var received = await Host.ReceivedAsync(ids);
            Assert.All(ids, id => Assert.True(received[id].Count >= 1, $"{id} never reached the receiver"));
        }
    }

    [Fact]
    public async Task A_worker_waiting_for_an_unreachable_primary_holds_no_more_sentinel_connections_with_each_attempt()
    {
        // The Sentinel answers, the primary it names does not (every data node down, a failover with no replica to
        // promote, a partition): every attempt gets through discovery and fails at the primary.
        await using var sentinel = await LoneSentinel.StartAsync(Host.Redis);
        if (Host.Worker is { HasExited: false } running)
        {
            await running.TerminateAsync(TimeSpan.FromSeconds(60));
        }

        var settings = new Dictionary<string, string?>(IoLaneHost.TestWorkerDefaults)
        {
            ["ConnectionStrings__redis"] = sentinel.ConnectionString + ",connectTimeout=1000,connectRetry=1",
            ["ConnectionStrings__rabbitmq"] = Host.Rabbit.ConnectionString,
            ["Downstream__BaseAddress"] = Host.ReceiverClient.BaseAddress!.ToString(),
        };
        await using var probe = await sentinel.ConnectProbeAsync();
        await using (var pause = ProcessPause.Of(Host.Redis.Pid))
        {
            await using var worker = ServiceProcess.Start("Worker.Io", settings, out var port);
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(10) };

            // Counted from the first attempt that got through the Sentinel and failed at the primary: on a loaded machine
            // the first attempt may time out at the Sentinel itself, which leaves nothing behind.
            await Eventually.TrueAsync(() => Task.FromResult(FailedAtPrimary(worker) >= 1 || worker.HasExited), Deadline,
                "Worker.Io to report a failed connect to the status store's primary");
            var afterFirst = await probe.ClientsAsync();
            var first = FailedAtPrimary(worker);
            await Eventually.TrueAsync(() => Task.FromResult(FailedAtPrimary(worker) >= first + 2 || worker.HasExited), Deadline,
                "Worker.Io to report two more failed connects to the status store's primary");
            var afterThird = await probe.ClientsAsync();
            output.WriteLine($"clients of the Sentinel (the probe's own included): {afterFirst} after a failed connect at the primary, {afterThird} two failed connects later");
            Assert.True(afterThird <= afterFirst,
                $"the Sentinel had {afterFirst} client connections after a failed connect of Worker.Io at the primary and {afterThird} two attempts later: " +
                "each attempt left its Sentinel connections open\n" + string.Join('\n', worker.Output.TakeLast(10)));

            // The Sentinel connection kept across attempts is the one the working connection is made through.
            pause.Resume();
            await Eventually.TrueAsync(async () => await ReadyAsync(http) == System.Net.HttpStatusCode.OK, Deadline,
                "Worker.Io to be ready once its primary answers", TimeSpan.FromMilliseconds(200));
            var afterConnect = await probe.ClientsAsync();
            output.WriteLine($"after the connect: {afterConnect} clients of the Sentinel");
            Assert.True(afterConnect <= afterFirst,
                $"the Sentinel had {afterFirst} client connections after a failed connect of Worker.Io at the primary and {afterConnect} once it was connected");
        }
    }

    [Fact]
    public async Task A_worker_whose_sentinel_names_a_primary_that_does_not_answer_consumes_nothing_while_only_a_replica_answers()
    {
        // The primary killed and a replica up, the Sentinel still naming the primary (it cannot fail over here): what a
        // worker starting between a primary's death and the promotion of a replica meets. A replica takes no write, so
        // the lane must not consume and the worker must not be ready until a primary answers.
        await using var set = await LoneSentinelWithReplica.StartAsync("ep-io");
        if (Host.Worker is { HasExited: false } running)
        {
            await running.TerminateAsync(TimeSpan.FromSeconds(60));
        }

        await set.Primary.KillAsync();
        var settings = new Dictionary<string, string?>(IoLaneHost.TestWorkerDefaults)
        {
            ["ConnectionStrings__redis"] = set.ConnectionString + ",connectTimeout=1000,connectRetry=1",
            ["ConnectionStrings__rabbitmq"] = Host.Rabbit.ConnectionString,
            ["Downstream__BaseAddress"] = Host.ReceiverClient.BaseAddress!.ToString(),
        };
        await using var worker = ServiceProcess.Start("Worker.Io", settings, out var port);
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(10) };

        await Eventually.TrueAsync(() => Task.FromResult(Connected(worker) || FailedConnects(worker) >= 2 || worker.HasExited), Deadline,
            "Worker.Io to connect its status store or to report two failed connects");
        output.WriteLine(string.Join('\n', worker.Output.Where(l => l.Contains("Status store", StringComparison.Ordinal) || l.Contains("no primary of service", StringComparison.Ordinal)).Take(6)));
        Assert.False(Connected(worker),
            "Worker.Io counted its status store as connected while the primary the Sentinel names did not answer and only a replica did:\n" +
            string.Join('\n', worker.Output.TakeLast(10)));
        Assert.False(worker.HasExited, "Worker.Io exited:\n" + string.Join('\n', worker.Output.TakeLast(10)));
        // Refused because only the replica answered (not for another failure that would hide the check).
        var replicaOnly = $"no primary of service ep-io answers, only its replica(s) 127.0.0.1:{set.ReplicaPort}";
        Assert.True(worker.Output.Any(l => l.Contains(replicaOnly, StringComparison.Ordinal)),
            $"Worker.Io never logged '{replicaOnly}':\n" + string.Join('\n', worker.Output.TakeLast(10)));
        var consumers = await LaneQueueConsumersAsync();
        Assert.True(consumers == 0, $"Worker.Io consumed from {IoLaneHost.QueueName} ({consumers} consumers) while no primary answered");
        var ready = await ReadyAsync(http);
        Assert.True(ready is not null and not System.Net.HttpStatusCode.OK,
            $"/health/ready answered {ready?.ToString() ?? "nothing within 10 s"} while no primary answered");

        // The primary back on its address: the worker connects to it without a restart.
        await set.Primary.StartProcessAsync();
        await Eventually.TrueAsync(async () => await ReadyAsync(http) == System.Net.HttpStatusCode.OK, Deadline,
            "Worker.Io to be ready once the primary answers", TimeSpan.FromMilliseconds(200));
        Assert.True(Connected(worker), "Worker.Io was ready without logging its status store connected");
    }

    [Fact]
    public async Task A_worker_whose_redis_connection_string_cannot_work_exits_with_an_error_naming_it()
    {
        // A Sentinel service name and no Sentinel to ask (an AppHost expression that rendered no hosts): no retry can
        // make this work, so the worker must say so and fail, not wait forever or exit as if it had stopped cleanly.
        var settings = new Dictionary<string, string?>(IoLaneHost.TestWorkerDefaults)
        {
            ["ConnectionStrings__redis"] = "serviceName=ep-io,password=unused",
            ["ConnectionStrings__rabbitmq"] = Host.Rabbit.ConnectionString,
            ["Downstream__BaseAddress"] = Host.ReceiverClient.BaseAddress!.ToString(),
        };
        await using var worker = ServiceProcess.Start("Worker.Io", settings, out _);
        await Eventually.TrueAsync(() => Task.FromResult(worker.HasExited), Deadline, "Worker.Io to exit on a Redis connection string without endpoints");
        output.WriteLine(string.Join('\n', worker.Output.TakeLast(15)));
        // Exit code 1 from our own stop, not 134 from an unhandled exception (a stop during the host's start can cancel the
        // start of the services after this one): a supervisor reads both as a failure, but only ours says why.
        Assert.True(worker.ExitCode == 1, $"Worker.Io exited with code {worker.ExitCode} on a Redis connection string it can never connect with (1 expected):\n" +
            string.Join('\n', worker.Output.TakeLast(15)));
        Assert.True(worker.Output.Any(l => l.Contains("cannot be connected with its settings (ConnectionStrings:redis", StringComparison.Ordinal)),
            "Worker.Io's output never says its ConnectionStrings:redis cannot work:\n" + string.Join('\n', worker.Output.TakeLast(15)));
        Assert.DoesNotContain(worker.Output, l => l.Contains("Unhandled exception", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_connect_that_completes_while_the_worker_stops_never_lets_the_lane_consume()
    {
        await using var sentinel = await LoneSentinel.StartAsync(Host.Redis);
        if (Host.Worker is { HasExited: false } running)
        {
            await running.TerminateAsync(TimeSpan.FromSeconds(60));
        }

        await using var probe = await sentinel.ConnectProbeAsync();
        await using var primaryProbe = await ClientCountProbe.ConnectAsync(Host.Redis.ConnectionString);
        var baseline = await probe.ClientsAsync();
        var primaryBaseline = await primaryProbe.ClientsAsync();
        await using var pause = ProcessPause.Of(sentinel.Pid);
        // The worker's registrations in this process, so the test can stand in the shutdown between the host's "stopping"
        // signal and the lane's own StopAsync (where MassTransit's stop, a no-op while the endpoints wait, runs in the
        // real one).
        var builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { EnvironmentName = "Production" });
        builder.Configuration.AddInMemoryCollection(IoLaneHost.TestWorkerDefaults
            .Select(pair => KeyValuePair.Create(pair.Key.Replace("__", ":", StringComparison.Ordinal), pair.Value))
            .Append(KeyValuePair.Create<string, string?>("ConnectionStrings:redis", sentinel.ConnectionString + ",connectTimeout=1000,connectRetry=1"))
            .Append(KeyValuePair.Create<string, string?>("ConnectionStrings:rabbitmq", Host.Rabbit.ConnectionString))
            .Append(KeyValuePair.Create<string, string?>("Downstream:BaseAddress", Host.ReceiverClient.BaseAddress!.ToString())));
        builder.AddIoLane();
        // Without the bus: MassTransit cannot stop a bus whose start has not returned (the endpoints wait for Ready),
        // so it would keep retrying its endpoints in this process for the rest of the run. Whether the endpoints may
        // consume is what Ready says.
        var bus = builder.Services.Where(d => d.ServiceType == typeof(IHostedService) && d.ImplementationType == typeof(MassTransit.MassTransitHostedService)).ToList();
        Assert.Single(bus);
        builder.Services.Remove(bus[0]);
        // Registered last, so stopped first: the Sentinel answers while the host is already stopping.
        builder.Services.AddHostedService(sp => new ResumesWhileStopping(pause, sp.GetRequiredService<Delivery.RedisConnectionAtStart>()));
        var phase = System.Diagnostics.Stopwatch.StartNew();
        using (var host = builder.Build())
        {
            var connection = host.Services.GetRequiredService<Delivery.RedisConnectionAtStart>();
            await host.StartAsync();
            Assert.False(connection.Ready.IsCompleted, "the status store connected while its Sentinel was stopped");
            var stopped = System.Diagnostics.Stopwatch.StartNew();
            await host.StopAsync();
            output.WriteLine($"Ready after the stop ({stopped.Elapsed.TotalSeconds:F1} s): {connection.Ready.Status}");
            Assert.True(connection.Ready.IsCanceled,
                $"the status store's connection completed its Ready ({connection.Ready.Status}) while the host was stopping: " +
                "the lane's endpoints were let start consuming during shutdown");
        }

        // Nothing the stopped host made stays connected: a connect it gave up on is disposed when it completes.
        var clients = await Eventually.ReturnsAsync(async () => (Sentinel: await probe.ClientsAsync(), Primary: await primaryProbe.ClientsAsync()),
            counts => counts.Sentinel <= baseline && counts.Primary <= primaryBaseline, Deadline,
            $"the clients of the Sentinel and of the primary to fall back to {baseline} and {primaryBaseline} once the host stopped", TimeSpan.FromMilliseconds(200));
        output.WriteLine($"{phase.Elapsed.TotalSeconds:F1} s after the build: clients back to {clients.Sentinel} (Sentinel) and {clients.Primary} (primary)");
    }

    [Fact]
    public void A_failover_racing_the_connect_is_retried_and_an_error_no_retry_can_heal_is_not()
    {
        // What the Sentinel's primary switch throws when the primary changes between discovery and the switch: its
        // reconfiguration is waited on with Task.Wait, so the Redis failure arrives wrapped.
        var failover = new AggregateException(new RedisConnectionException(ConnectionFailureType.UnableToConnect, "Sentinel: Failed connecting to switch primary for service: ep-io"));
        Assert.True(Delivery.RedisConnectionAtStart.IsTransient(failover), "a failover racing the connect would stop Worker.Io instead of being retried");
        Assert.True(Delivery.RedisConnectionAtStart.IsTransient(new RedisConnectionException(ConnectionFailureType.UnableToConnect, "timeout")),
            "a Redis connection failure would not be retried");
        Assert.False(Delivery.RedisConnectionAtStart.IsTransient(new ArgumentException("No endpoints specified", "config")),
            "a connection string without endpoints would be retried forever");
        Assert.False(Delivery.RedisConnectionAtStart.IsTransient(new AggregateException(failover.InnerExceptions[0], new NullReferenceException())),
            "a defect wrapped with a Redis failure would be retried forever");
    }

    [Fact]
    public void The_status_store_connection_is_the_lanes_own_even_beside_a_keyed_redis_client()
    {
        // A keyed Redis client registered first (another store a later change may add): replacing Aspire's unkeyed
        // factory must not take the keyed one instead, or Aspire's synchronous connect at the first resolve comes back.
        var builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { EnvironmentName = "Production" });
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false,connectTimeout=100",
            ["ConnectionStrings:other"] = "127.0.0.1:1,abortConnect=false,connectTimeout=100",
            ["ConnectionStrings:rabbitmq"] = Host.Rabbit.ConnectionString,
            ["Downstream:BaseAddress"] = Host.ReceiverClient.BaseAddress!.ToString(),
        });
        builder.AddKeyedRedisClient("other");
        builder.AddIoLane();

        var descriptors = builder.Services.Where(d => d.ServiceType == typeof(IConnectionMultiplexer)).ToList();
        Assert.True(descriptors.Count(d => !d.IsKeyedService) == 1 && descriptors.Count(d => d.IsKeyedService) == 1,
            $"IConnectionMultiplexer registrations: {descriptors.Count(d => !d.IsKeyedService)} unkeyed, {descriptors.Count(d => d.IsKeyedService)} keyed (expected one of each)");
        using var provider = builder.Services.BuildServiceProvider();
        IConnectionMultiplexer? made = null;
        var resolving = Record.Exception(() => made = provider.GetRequiredService<IConnectionMultiplexer>());
        made?.Dispose();
        Assert.True(resolving is RedisConnectionException && resolving.Message.Contains("still connecting", StringComparison.Ordinal),
            $"resolving IConnectionMultiplexer before the lane's connection was up gave {made?.GetType().Name ?? resolving?.GetType().Name}: " +
            (made is not null ? "a connection made at the resolve, not the lane's" : resolving?.Message));
    }

    /// <summary>Resumes the paused Sentinel in the shutdown, then waits for the connection's Ready to settle either way.</summary>
    private sealed class ResumesWhileStopping(ProcessPause pause, Delivery.RedisConnectionAtStart connection) : IHostedService
    {
        public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public async Task StopAsync(CancellationToken cancellationToken)
        {
            pause.Resume();
            await Eventually.TrueAsync(() => Task.FromResult(connection.Ready.IsCompleted), TimeSpan.FromSeconds(60),
                "the status store's connection to connect or give up once its Sentinel answers", TimeSpan.FromMilliseconds(50));
        }
    }

    private static bool Connected(ChildProcess worker) =>
        worker.Output.Any(l => l.Contains("Status store connected", StringComparison.Ordinal));

    private static int FailedConnects(ChildProcess worker) =>
        worker.Output.Count(l => l.Contains("Status store not reachable", StringComparison.Ordinal));

    /// <summary>Failed attempts that got through the Sentinel (the logged exception's stack passes its primary lookup).</summary>
    private static int FailedAtPrimary(ChildProcess worker) =>
        worker.Output.Count(l => l.Contains("ConnectionMultiplexer.GetSentinelMasterConnection", StringComparison.Ordinal));

    private static int FailedConnectsAfterBusConnected(ChildProcess worker) =>
        worker.Output.SkipWhile(l => !l.Contains("Connected: ", StringComparison.Ordinal))
            .Count(l => l.Contains("Status store not reachable", StringComparison.Ordinal));

    private static async Task<System.Net.HttpStatusCode?> ReadyAsync(HttpClient http)
    {
        try
        {
            return (await http.GetAsync("/health/ready")).StatusCode;
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException)
        {
            return null;
        }
    }

    private Task<uint> LaneQueueConsumersAsync() => QueueConsumersAsync(IoLaneHost.QueueName);

    private async Task<uint> QueueConsumersAsync(string queue)
    {
        await using var connection = await Host.Rabbit.ConnectAsync();
        await using var channel = await connection.CreateChannelAsync();
        return (await channel.QueueDeclarePassiveAsync(queue)).ConsumerCount;
    }
}
