using System.IO.Pipelines;
using System.Net;
using System.Reflection;
using System.Text;
using System.Text.Json;
using EventPipeline.Producer.Apis;
using EventPipeline.Producer.Ingest;
using EventPipeline.Shared;
using EventPipeline.Testing;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.UnitTests;

/// <summary>
/// A Redis connection that dies while a command is written is a broker outage on every endpoint: 503 with Retry-After,
/// never a 500 (StackExchange.Redis#2692: the 2.x client throws System.IO.Pipelines' InvalidOperationException, not a
/// RedisConnectionException). The race itself could not be provoked on demand (64 writers against CLIENT KILL and
/// SIGKILLed servers: millions of RedisConnectionExceptions, no race), so the exception is injected at the endpoints'
/// Redis seam: the API runs in process against a real redis-server, and for a request marked with a header its
/// IDatabase calls fail with that exception — thrown by System.IO.Pipelines inside StackExchange.Redis's frames, as in the
/// CI failure. Other InvalidOperationExceptions stay 500s.
/// </summary>
public sealed class RedisConnectionLossTests(RedisConnectionLossTests.Api api) : IClassFixture<RedisConnectionLossTests.Api>
{
    /// <summary>Each endpoint, and what its 503 must tell the client: a read that nothing changed, a write what may be held.</summary>
    public static TheoryData<string, string, string?, string> RedisEndpoints => new()
    {
        { "GET", "/events/some-event", null, "Nothing about the event changed" },
        { "POST", "/events/some-event/cancel", null, "may or may not have been cancelled" },
        { "POST", "/events", """{"type":"noop.cpu","payload":{},"delay":60}""", "Nothing new was enqueued by this request" },
        { "PUT", "/schedules/nightly", """{"cron":"0 0 * * *","event":{"type":"noop.cpu","payload":{}}}""", "may or may not have been saved" },
        // Answered by RedisOutageProblem: its wording for a read, then for a write.
        { "GET", "/schedules", null, "nothing was changed" },
        { "DELETE", "/schedules/nightly", null, "may already be held" },
        { "GET", "/dead-letters/cpu", null, "nothing was changed unless the broker confirmed it" },
    };

    [Theory]
    [MemberData(nameof(RedisEndpoints))]
    public async Task A_redis_connection_lost_mid_write_is_a_503_with_retry_after_never_a_500(string method, string path, string? body, string tells)
    {
        var injectedBefore = api.RaceInjected;
        using var response = await api.SendAsync(method, path, body, breakRedis: true);
        var text = await response.Content.ReadAsStringAsync();

        Assert.True(response.StatusCode == HttpStatusCode.ServiceUnavailable,
            $"{method} {path} with the Redis connection lost mid-write answered {(int)response.StatusCode}: {text}");
        Assert.True(response.Headers.RetryAfter?.Delta > TimeSpan.Zero, $"{method} {path}: 503 without Retry-After");
        var problem = JsonDocument.Parse(text).RootElement;
        Assert.Equal(Problems.BrokerUnavailable, problem.GetProperty("type").GetString());
        Assert.Contains(tells, problem.GetProperty("detail").GetString(), StringComparison.Ordinal);
        // Counted per request: a 503 from anything but the injected race (the fixture's unreachable RabbitMQ) fails here.
        Assert.True(api.RaceInjected > injectedBefore, $"{method} {path}: the injected failure never reached a Redis call of this request");
    }

    public static TheoryData<string, string> EndpointsWithoutTheirOwnCatch => new()
    {
        { "DELETE", "/schedules/nightly" },
        { "POST", "/schedules/nightly/pause" },
        { "GET", "/schedules" },
        { "GET", "/schedules/nightly" },
    };

    [Theory]
    [MemberData(nameof(EndpointsWithoutTheirOwnCatch))]
    public async Task A_failover_reply_from_redis_is_a_503_with_retry_after_never_a_500(string method, string path)
    {
        // What a Sentinel failover answers the client that still writes to the old primary.
        using var response = await api.SendAsync(method, path, null, breakRedis: true, serverError: "READONLY You can't write against a read only replica.");
        var text = await response.Content.ReadAsStringAsync();

        Assert.True(response.StatusCode == HttpStatusCode.ServiceUnavailable,
            $"{method} {path} with Redis answering READONLY answered {(int)response.StatusCode}: {text}");
        Assert.True(response.Headers.RetryAfter?.Delta > TimeSpan.Zero, $"{method} {path}: 503 without Retry-After");
    }

    [Fact]
    public async Task Any_other_error_reply_from_redis_stays_an_internal_error()
    {
        // A script bug is a defect: a 503 would have the client retry it forever.
        using var response = await api.SendAsync("DELETE", "/schedules/nightly", null, breakRedis: true, serverError: "ERR Error running script (call to f_0123): @user_script:1: oops");

        Assert.Equal(HttpStatusCode.InternalServerError, response.StatusCode);
    }

    [Fact]
    public async Task The_same_requests_answer_normally_when_redis_does()
    {
        // The seam itself changes nothing: without the header the endpoints reach the real Redis.
        using var response = await api.SendAsync("GET", "/events/some-event", null, breakRedis: false);

        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
    }

    [Fact]
    public async Task Any_other_invalid_operation_stays_an_internal_error()
    {
        using var response = await api.SendAsync("GET", Api.DefectPath, null, breakRedis: false);

        Assert.Equal(HttpStatusCode.InternalServerError, response.StatusCode);
    }

    [Fact]
    public void Only_the_redis_clients_writer_completed_race_is_taken_for_a_connection_loss()
    {
        Assert.True(RedisFailures.IsConnectionLostMidWrite(WriterCompletedInsideRedisClient()));

        // Thrown by System.IO.Pipelines, but not inside the Redis client (Kestrel's pipes, our own code): a defect.
        var pipe = new Pipe();
        pipe.Writer.Complete();
        var outside = Assert.Throws<InvalidOperationException>(() => pipe.Writer.GetSpan());
        Assert.False(RedisFailures.IsConnectionLostMidWrite(outside));

        // Inside the Redis client, but not System.IO.Pipelines' (or not exactly an InvalidOperationException): a defect.
        var ours = Assert.Throws<InvalidOperationException>(() => ConnectionMultiplexer.Connect("127.0.0.1:1", _ => throw new InvalidOperationException("ours")));
        Assert.False(RedisFailures.IsConnectionLostMidWrite(ours));
        var disposed = Assert.Throws<ObjectDisposedException>(() => ConnectionMultiplexer.Connect("127.0.0.1:1", _ => throw new ObjectDisposedException("ours")));
        Assert.False(RedisFailures.IsConnectionLostMidWrite(disposed));
    }

    public static TheoryData<string, bool> ErrorReplies => new()
    {
        { "READONLY You can't write against a read only replica.", true },
        { "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", true },
        { "LOADING Redis is loading the dataset in memory", true },
        { "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.", true },
        { "TRYAGAIN Multiple keys request during rehashing of slot", true },
        { "CLUSTERDOWN The cluster is down", true },
        { "NOREPLICAS Not enough good replicas to write.", true },
        { "OOM command not allowed when used memory > 'maxmemory'.", true },
        { "NOSCRIPT No matching script. Please use EVAL.", true },
        // A full disk under appendonly/save: Redis refuses writes until one succeeds again, as transient as OOM.
        { "MISCONF Errors writing to the AOF file: No space left on device", true },
        { "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.", true },
        { "WRONGTYPE Operation against a key holding the wrong kind of value", false },
        { "ERR Error running script (call to f_0123): @user_script:1: oops", false },
        { "ERR unknown command 'HSETX'", false },
        { "NOPERM this user has no permissions to run the 'eval' command", false },
    };

    [Theory]
    [MemberData(nameof(ErrorReplies))]
    public void Only_an_error_reply_an_outage_gives_is_an_outage_and_any_redis_error_is_a_redis_failure(string reply, bool outage)
    {
        var error = new RedisServerException(reply);

        Assert.Equal(outage, RedisFailures.IsOutage(error));
        // What the I/O lane's coalesced status writes throw: a wrapper per caller around the call's failure.
        Assert.Equal(outage, RedisFailures.IsOutage(new RedisException("Status write of event:x failed with the call that carried it", error)));
        // The background loops' predicate: any error of Redis, so that a defect does not end the loop either.
        Assert.True(RedisFailures.IsRedisFailure(error));
    }

    [Fact]
    public void A_connection_failure_a_timeout_or_the_writer_race_is_an_outage_and_a_client_side_defect_is_not()
    {
        Assert.True(RedisFailures.IsOutage(new RedisConnectionException(ConnectionFailureType.SocketClosed, "closed")));
        Assert.True(RedisFailures.IsOutage(new RedisTimeoutException("Timeout awaiting response", CommandStatus.Sent)));
        Assert.True(RedisFailures.IsOutage(new TimeoutException("status write not answered in time")));
        Assert.True(RedisFailures.IsOutage(new TimeoutException("wrapped", new RedisConnectionException(ConnectionFailureType.SocketClosed, "closed"))));
        Assert.True(RedisFailures.IsOutage(WriterCompletedInsideRedisClient()));
        Assert.False(RedisFailures.IsOutage(new RedisException("a reply of another shape")));
        Assert.False(RedisFailures.IsOutage(new RedisCommandException("Command cannot be issued to a replica: EVAL")));
        Assert.False(RedisFailures.IsOutage(new InvalidOperationException("ours")));
    }

    [Theory]
    [InlineData("/schedules/wrong-type", "schedule:wrong-type")]
    [InlineData("/events/wrong-type", "event:wrong-type")]
    public async Task A_key_of_the_wrong_type_in_redis_is_a_500_not_a_503_the_client_would_retry_forever(string path, string key)
    {
        // A real WRONGTYPE from a real redis-server: a defect (of what was stored), which a retry cannot cure.
        await using (var redis = await ConnectionMultiplexer.ConnectAsync(api.RedisConnectionString))
        {
            await redis.GetDatabase().ListLeftPushAsync(key, "not a hash");
        }

        using var response = await api.SendAsync("GET", path, null, breakRedis: false);
        var text = await response.Content.ReadAsStringAsync();

        Assert.True(response.StatusCode == HttpStatusCode.InternalServerError,
            $"GET {path} with {key} of the wrong type answered {(int)response.StatusCode} (Retry-After {response.Headers.RetryAfter?.Delta}): {text}");
    }

    [Fact]
    public async Task An_io_event_rabbitmq_confirmed_stays_accepted_when_its_status_write_loses_the_connection_mid_write()
    {
        // RabbitMQ holds the events: a lost status write only delays their status. Throwing here skipped the 202 that
        // names their ids, and a keyless client's retry published them a second time under new ids.
        var thrown = await Record.ExceptionAsync(() =>
            IoLanePublisher.AwaitStatusWritesAsync([Task.FromException(WriterCompletedInsideRedisClient())], NullLogger.Instance));

        Assert.True(thrown is null, $"the status write's race left the I/O publish: {thrown?.GetType().Name}: {thrown?.Message}");
    }

    [Fact]
    public async Task A_replica_ack_round_that_loses_the_connection_mid_write_fails_as_a_redis_connection_failure()
    {
        // The callers (CPU-lane publish, keyed CPU submission, ingest) answer a RedisException with a 503 naming the
        // request's uncertainIds; the raw race skipped that and got a 503 without ids.
        await using var shared = await ConnectionMultiplexer.ConnectAsync(api.RedisConnectionString);
        await using var acks = new RedisReplicaAcknowledgement(shared, Options.Create(ConfigurationOptions.Parse(api.RedisConnectionString)),
            Options.Create(new IngestOptions { RedisReplicaAcks = 1 }), NullLogger<RedisReplicaAcknowledgement>.Instance)
        {
            WrapConnection = connection => RaceOn.Wrap(connection, nameof(IDatabaseAsync.StringSetAsync)),
        };
        var primary = await acks.PrimaryAsync();

        var thrown = await Record.ExceptionAsync(() => acks.WaitAsync(primary, CancellationToken.None));

        Assert.True(thrown is RedisConnectionException, $"the replica-ack round's race surfaced as {thrown?.GetType().Name}: {thrown?.Message}");
    }

    [Fact]
    public async Task Identifying_the_primary_for_replica_acks_fails_as_a_redis_connection_failure_when_the_connection_is_lost_mid_write()
    {
        await using var real = await ConnectionMultiplexer.ConnectAsync(api.RedisConnectionString);
        await using var acks = new RedisReplicaAcknowledgement(RaceOn.Wrap(real, nameof(IDatabaseAsync.IdentifyEndpointAsync)), Options.Create(ConfigurationOptions.Parse(api.RedisConnectionString)),
            Options.Create(new IngestOptions { RedisReplicaAcks = 1 }), NullLogger<RedisReplicaAcknowledgement>.Instance);

        var thrown = await Record.ExceptionAsync(acks.PrimaryAsync);

        Assert.True(thrown is RedisConnectionException, $"identifying the primary's race surfaced as {thrown?.GetType().Name}: {thrown?.Message}");
    }

    [Fact]
    public async Task A_cancel_whose_answer_is_lost_says_it_may_have_been_applied_and_a_repeated_cancel_is_safe()
    {
        using var submitted = await api.SendAsync("POST", "/events", """{"type":"noop.cpu","payload":{},"delay":3600}""", breakRedis: false);
        var body = await submitted.Content.ReadAsStringAsync();
        Assert.True(submitted.StatusCode == HttpStatusCode.Accepted, body);
        var id = JsonDocument.Parse(body).RootElement.GetProperty("id").GetString()!;

        // The cancel script runs and commits (the request's first Redis call); reading the status back (the second) fails.
        using var lost = await api.SendAsync("POST", $"/events/{id}/cancel", null, breakRedis: true, breakFromCall: 2);
        var problem = JsonDocument.Parse(await lost.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal(HttpStatusCode.ServiceUnavailable, lost.StatusCode);
        var detail = problem.GetProperty("detail").GetString()!;
        Assert.DoesNotContain("nothing changed", detail, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("may or may not have been cancelled", detail, StringComparison.Ordinal);

        // It was cancelled, and the retry the answer recommends is safe: 200 with the same cancelled status.
        using var read = await api.SendAsync("GET", $"/events/{id}", null, breakRedis: false);
        Assert.Equal("cancelled", JsonDocument.Parse(await read.Content.ReadAsStringAsync()).RootElement.GetProperty("state").GetString());
        using var repeated = await api.SendAsync("POST", $"/events/{id}/cancel", null, breakRedis: false);
        var repeatedBody = await repeated.Content.ReadAsStringAsync();
        Assert.True(repeated.StatusCode == HttpStatusCode.OK, repeatedBody);
        Assert.Equal("cancelled", JsonDocument.Parse(repeatedBody).RootElement.GetProperty("state").GetString());
    }

    /// <summary>
    /// System.IO.Pipelines' "Writing is not allowed after writer was completed", thrown inside StackExchange.Redis's
    /// frames (its Connect runs the configure callback before it connects), as the client's write path throws it.
    /// </summary>
    internal static InvalidOperationException WriterCompletedInsideRedisClient()
    {
        var pipe = new Pipe();
        pipe.Writer.Complete();
        var race = Assert.Throws<InvalidOperationException>(() => ConnectionMultiplexer.Connect("127.0.0.1:1", _ => pipe.Writer.GetSpan()));
        Assert.Equal("Writing is not allowed after writer was completed.", race.Message);
        return race;
    }

    /// <summary>A task of <paramref name="returnType"/> (Task or Task&lt;T&gt;) that failed with <paramref name="exception"/>.</summary>
    private static object Faulted(Type returnType, Exception exception) => returnType.IsGenericType
        ? typeof(Task).GetMethod(nameof(Task.FromException), 1, [typeof(Exception)])!.MakeGenericMethod(returnType.GetGenericArguments()[0]).Invoke(null, [exception])!
        : Task.FromException(exception);

    /// <summary>Forwards to a real client; the named calls of its databases always fail with the race.</summary>
    public class RaceOn : DispatchProxy
    {
        private object _target = null!;
        private string[] _failing = [];

        public static IConnectionMultiplexer Wrap(IConnectionMultiplexer real, params string[] failing) => Create(real, failing);

        private static T Create<T>(T target, string[] failing) where T : class
        {
            var proxy = DispatchProxy.Create<T, RaceOn>();
            ((RaceOn)(object)proxy)._target = target;
            ((RaceOn)(object)proxy)._failing = failing;
            return proxy;
        }

        protected override object? Invoke(MethodInfo? method, object?[]? args)
        {
            if (_target is IDatabaseAsync && _failing.Contains(method!.Name))
            {
                return Faulted(method.ReturnType, WriterCompletedInsideRedisClient());
            }

            try
            {
                var result = method!.Invoke(_target, args);
                return result is IDatabase db ? Create(db, _failing) : result;
            }
            catch (TargetInvocationException ex) when (ex.InnerException is not null)
            {
                throw ex.InnerException;
            }
        }
    }

    /// <summary>The API's services and error handling in process, on a loopback port, against a real redis-server.</summary>
    public sealed class Api : IAsyncLifetime
    {
        public const string DefectPath = "/test/defect";
        private const string BreakHeader = "X-Test-Break-Redis";
        private const string ServerErrorHeader = "X-Test-Redis-Error";
        private const string AdminKey = "admin-key-0123456789";
        private const string SubmitKey = "submit-key-0123456789";
        private static readonly AsyncLocal<Breaker?> Breaking = new();
        private static int _raceInjected;

        private RedisServer? _redis;
        private WebApplication? _app;
        private HttpClient? _http;

        public int RaceInjected => Volatile.Read(ref _raceInjected);

        public string RedisConnectionString => _redis!.ConnectionString;

        public IConfiguration Configuration => _app!.Configuration;

        public async Task InitializeAsync()
        {
            _redis = await RedisServer.StartAsync();
            try
            {
                await StartApiAsync(_redis);
            }
            catch
            {
                // xunit does not dispose a fixture whose start threw: without this the redis-server outlives the run.
                await DisposeAsync();
                throw;
            }
        }

        private async Task StartApiAsync(RedisServer redis)
        {
            var builder = WebApplication.CreateBuilder();
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            builder.Logging.ClearProviders();
            builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["ConnectionStrings:redis"] = redis.ConnectionString,
                ["ConnectionStrings:rabbitmq"] = "amqp://guest:guest@127.0.0.1:1",
                ["Auth:ApiKeys:Submit"] = SubmitKey,
                ["Auth:ApiKeys:Admin"] = AdminKey,
                ["Routing:Rules:noop.cpu"] = "cpu",
            });
            // As Program.cs composes the API.
            builder.AddServiceDefaults();
            builder.AddApplicationServices();
            builder.AddInFlightIngestBudget();

            // The seam: the multiplexer Aspire registered, whose databases fail a marked request's calls with the race.
            var registered = builder.Services.Single(d => d.ServiceType == typeof(IConnectionMultiplexer) && !d.IsKeyedService);
            builder.Services.Remove(registered);
            builder.Services.AddSingleton(sp => FailingRedis.Wrap((IConnectionMultiplexer)registered.ImplementationFactory!(sp)));

            _app = builder.Build();
            _app.UseExceptionHandler();
            _app.UseStatusCodePages();
            _app.Use(async (context, next) =>
            {
                Breaking.Value = context.Request.Headers.TryGetValue(BreakHeader, out var from)
                    ? new Breaker(int.Parse(from!, System.Globalization.CultureInfo.InvariantCulture), context.Request.Headers[ServerErrorHeader].FirstOrDefault())
                    : null;
                await next(context);
            });
            _app.MapEventsApi();
            _app.MapSchedulesApi();
            _app.MapDeadLettersApi();
            _app.MapGet(DefectPath, string () => throw new InvalidOperationException("a defect, not an outage"));
            await _app.StartAsync();

            var address = _app.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
            _http = new HttpClient { BaseAddress = new Uri(address), Timeout = TimeSpan.FromSeconds(60) };
        }

        /// <param name="breakFromCall">the request's first Redis call that fails (1: all of them).</param>
        /// <param name="serverError">instead of the race, the calls fail with this error reply from Redis.</param>
        public async Task<HttpResponseMessage> SendAsync(string method, string path, string? body, bool breakRedis, int breakFromCall = 1, string? serverError = null)
        {
            var request = new HttpRequestMessage(new HttpMethod(method), path);
            var admin = path.StartsWith("/schedules", StringComparison.Ordinal) || path.StartsWith("/dead-letters", StringComparison.Ordinal);
            request.Headers.Add("X-Api-Key", admin ? AdminKey : SubmitKey);
            request.Headers.Add("Idempotency-Key", Guid.NewGuid().ToString("N"));
            if (breakRedis)
            {
                request.Headers.Add(BreakHeader, breakFromCall.ToString(System.Globalization.CultureInfo.InvariantCulture));
                if (serverError is not null)
                {
                    request.Headers.Add(ServerErrorHeader, serverError);
                }
            }

            if (body is not null)
            {
                request.Content = new StringContent(body, Encoding.UTF8, "application/json");
            }

            return await _http!.SendAsync(request);
        }

        public async Task DisposeAsync()
        {
            _http?.Dispose();
            if (_app is not null)
            {
                await _app.StopAsync();
                await _app.DisposeAsync();
            }

            if (_redis is not null)
            {
                await _redis.DisposeAsync();
            }
        }

        /// <summary>
        /// One marked request's Redis calls: those from the <paramref name="FailFrom"/>-th on fail, with the race or with
        /// <paramref name="ServerError"/> as Redis's error reply.
        /// </summary>
        private sealed record Breaker(int FailFrom, string? ServerError)
        {
            private int _calls;

            public bool Fails() => Interlocked.Increment(ref _calls) >= FailFrom;
        }

        /// <summary>Forwards to the real client; its databases, batches and transactions fail every awaitable call of a marked request with the race.</summary>
        public class FailingRedis : DispatchProxy
        {
            private object _target = null!;

            public static IConnectionMultiplexer Wrap(IConnectionMultiplexer real) => Create<IConnectionMultiplexer>(real);

            private static T Create<T>(T target) where T : class
            {
                var proxy = DispatchProxy.Create<T, FailingRedis>();
                ((FailingRedis)(object)proxy)._target = target;
                return proxy;
            }

            protected override object? Invoke(MethodInfo? method, object?[]? args)
            {
                if (_target is IDatabaseAsync && Breaking.Value is { } breaker && typeof(Task).IsAssignableFrom(method!.ReturnType) && breaker.Fails())
                {
                    Interlocked.Increment(ref _raceInjected);
                    return Faulted(method.ReturnType, breaker.ServerError is { } reply ? new RedisServerException(reply) : WriterCompletedInsideRedisClient());
                }

                object? result;
                try
                {
                    result = method!.Invoke(_target, args);
                }
                catch (TargetInvocationException ex) when (ex.InnerException is not null)
                {
                    throw ex.InnerException;
                }

                // Databases, and the batches and transactions they create, fail; everything else is the real client's.
                return result switch
                {
                    // A transaction is a database too: the most specific interface first.
                    ITransaction transaction => Create(transaction),
                    IBatch batch => Create(batch),
                    IDatabase db => Create(db),
                    _ => result,
                };
            }
        }
    }
}
