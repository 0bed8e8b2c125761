using EventPipeline.Testing;
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
        };
        await using (var pause = ProcessPause.Of(sentinel.Pid))
        {
            await using var worker = ServiceProcess.Start("Worker.Io", settings, out var port);
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(10) };

            // Either the worker consumes (the failure) or it has failed to connect twice and still waits (the guarantee).
            await Eventually.TrueAsync(async () => (await LaneQueueConsumersAsync()) > 0 || FailedConnects(worker) >= 2,
                Deadline, "Worker.Io to consume from the lane queue or to report two failed connects to its status store");
            var consumers = await LaneQueueConsumersAsync();
            output.WriteLine($"while the Sentinel was stopped: {consumers} consumers on {IoLaneHost.QueueName}, {FailedConnects(worker)} failed connects logged");
            Assert.True(consumers == 0,
                $"Worker.Io consumed from {IoLaneHost.QueueName} ({consumers} consumers) while its status store could not be reached:\n" +
                string.Join('\n', worker.Output.TakeLast(20)));
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

    private static int FailedConnects(ChildProcess worker) =>
        worker.Output.Count(l => l.Contains("Status store not reachable", StringComparison.Ordinal));

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

    private async Task<uint> LaneQueueConsumersAsync()
    {
        await using var connection = await Host.Rabbit.ConnectAsync();
        await using var channel = await connection.CreateChannelAsync();
        return (await channel.QueueDeclarePassiveAsync(IoLaneHost.QueueName)).ConsumerCount;
    }
}

/// <summary>
/// One <c>redis-server --sentinel</c> on a free loopback port watching an existing redis-server (quorum 1, no replicas):
/// enough for a client to go through Sentinel discovery (<c>serviceName=</c>) as the cluster AppHost's services do,
/// for the price of one process.
/// </summary>
internal sealed class LoneSentinel : IAsyncDisposable
{
    private const string ServiceName = "ep-io";
    private readonly ScratchDirectory _directory = new("ep-lone-sentinel");
    private ChildProcess? _process;

    private LoneSentinel(RedisServer primary) => Primary = primary;

    public RedisServer Primary { get; }

    public int Port { get; private set; }

    public int Pid => _process!.Pid;

    public string ConnectionString => $"127.0.0.1:{Port},serviceName={ServiceName},password={Primary.Password}";

    public static async Task<LoneSentinel> StartAsync(RedisServer primary)
    {
        var sentinel = new LoneSentinel(primary);
        try
        {
            sentinel.Port = LocalPorts.Free();
            // Sentinel rewrites its config file, so it gets its own writable copy.
            var config = Path.Combine(sentinel._directory.Path, "sentinel.conf");
            File.WriteAllText(config, $"""
                port {sentinel.Port}
                bind 127.0.0.1
                daemonize no
                dir {sentinel._directory.Path}
                requirepass {primary.Password}
                sentinel announce-ip 127.0.0.1
                sentinel monitor {ServiceName} 127.0.0.1 {primary.Port} 1
                sentinel auth-pass {ServiceName} {primary.Password}

                """);
            sentinel._process = ChildProcess.Start($"sentinel-{sentinel.Port}", "redis-server", [config, "--sentinel"], new Dictionary<string, string?>());
            await Eventually.TrueAsync(async () =>
            {
                if (sentinel._process.HasExited)
                {
                    throw new InvalidOperationException($"sentinel on port {sentinel.Port} exited: {sentinel._process.OutputText}");
                }

                try
                {
                    await using var client = await ConnectionMultiplexer.ConnectAsync(sentinel.ConnectionString + ",abortConnect=true,connectTimeout=2000");
                    return await client.GetDatabase().PingAsync() >= TimeSpan.Zero;
                }
                catch (RedisException)
                {
                    return false;
                }
            }, TimeSpan.FromSeconds(30), $"a client to reach the primary through the sentinel on port {sentinel.Port}", TimeSpan.FromMilliseconds(200));
            return sentinel;
        }
        catch
        {
            await sentinel.DisposeAsync();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_process is not null)
        {
            await _process.KillAsync();
            await _process.DisposeAsync();
        }

        _directory.Dispose();
    }
}
