using EventPipeline.Contracts;
using EventPipeline.Producer.Apis;
using EventPipeline.Producer.DeadLetters;
using EventPipeline.Producer.Ingest;
using EventPipeline.Producer.Monitoring;
using EventPipeline.Producer.Security;
using EventPipeline.Producer.Validation;
using EventPipeline.Shared;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace Microsoft.Extensions.Hosting;

public static class ProducerExtensions
{
    /// <summary>The API's settings for every Redis connection it opens (the shared one and the replica-ack one).</summary>
    internal static void ConfigureRedis(StackExchange.Redis.ConfigurationOptions options, IConfiguration configuration)
    {
        // While Redis is unreachable, fail at once (503) instead of queueing writes that might land after we answered.
        options.BacklogPolicy = StackExchange.Redis.BacklogPolicy.FailFast;
        options.AbortOnConnectFail = false;
        // Replies are completed on the thread pool instead of the client's dedicated reader threads, which handed
        // every reply to a pool thread anyway: one thread wake-up less per round trip. Single POSTs cost less API
        // CPU in 9 of 10 paired runs, batches of 100 no more (docs/benchmarks-history.md, "Session 6: API").
        if (configuration.GetValue("Performance:RedisOnThreadPool", true))
        {
            options.SocketManager = StackExchange.Redis.SocketManager.ThreadPool;
        }
    }

    public static IHostApplicationBuilder AddApplicationServices(this IHostApplicationBuilder builder)
    {
        builder.AddRedisClient("redis", configureOptions: options => ConfigureRedis(options, builder.Configuration));
        // Under Sentinel, Aspire's synchronous first connect throws when no Sentinel answers, and the hosted services make
        // it at host start: the API would exit. The connection is made in the background instead (SentinelConnectionAtStart).
        builder.AddSentinelConnectionAtStart();

        builder.Services.AddOptions<RoutingOptions>().BindConfiguration("Routing");
        builder.Services.AddOptions<TestEventsOptions>().BindConfiguration("TestEvents");
        builder.Services.AddOptions<IngestOptions>().BindConfiguration("Ingest").ValidateDataAnnotations()
            .Validate(o => o.MaxEventBytes > 0 && o.MaxBatchBytes >= o.MaxEventBytes && o.MaxBatchEvents > 0 && o.BrokerTimeout > TimeSpan.Zero && o.IoPublishChunk > 0,
                "Ingest limits must be positive and MaxBatchBytes at least MaxEventBytes")
            .ValidateOnStart();
        builder.Services.AddOptions<StatusOptions>().BindConfiguration("Status");
        builder.Services.AddOptions<DownstreamTargetOptions>().BindConfiguration("Downstream")
            .Validate(o => o.TryGetOrigins(out _, out _), "Downstream:AllowedOrigins must hold origins (scheme://host[:port], http or https) and Downstream:AllowedHosts host names")
            .ValidateOnStart();
        builder.Services.AddOptions<BackpressureOptions>().BindConfiguration("Backpressure")
            .Validate(o => o.RetryAfterSeconds > 0 && o.MaxLag.All(l => Lanes.All.Contains(l.Key) && l.Value >= 0),
                "Backpressure:MaxLag keys must be lanes (cpu, io) with limits >= 0, and RetryAfterSeconds positive")
            .ValidateOnStart();
        builder.Services.AddOptions<LaneMonitorOptions>().BindConfiguration("LaneMonitor")
            .Validate(o => o.SampleInterval > TimeSpan.Zero && o.Timeout > TimeSpan.Zero, "LaneMonitor intervals must be positive")
            .ValidateOnStart();
        builder.Services.AddOptions<DeadLetterOptions>().BindConfiguration("DeadLetters")
            .Validate(o => o.ReplayAllLimit > 0 && o.MaxScan > 0 && o.DefaultPageSize > 0 && o.MaxPageSize >= o.DefaultPageSize,
                "DeadLetters limits must be positive and MaxPageSize at least DefaultPageSize")
            .ValidateOnStart();
        builder.Services.AddOptions<ApiKeyOptions>().BindConfiguration("Auth:ApiKeys")
            .Validate(o => o.Submit.Length >= 16 && o.Admin.Length >= 16 && o.Submit != o.Admin,
                "Auth:ApiKeys:Submit and Auth:ApiKeys:Admin must be set, at least 16 characters, and differ")
            .ValidateOnStart();

        builder.Services.AddSingleton<EventRouter>();
        builder.Services.AddSingleton<DownstreamTargets>();
        builder.Services.AddSingleton<EventValidator>();
        builder.Services.AddSingleton<EventStatusStore>();
        builder.Services.AddSingleton<RedisReplicaAcknowledgement>();
        builder.Services.AddSingleton<ILanePublisher, CpuLanePublisher>();
        builder.Services.AddSingleton<ILanePublisher, IoLanePublisher>();
        builder.Services.AddSingleton<IdempotencyGuard>();
        builder.Services.AddSingleton<CpuLaneSubmission>();
        builder.Services.AddSingleton<Backpressure>();
        builder.Services.AddSingleton<EventIngest>();
        builder.AddScheduling();

        // The API's own AMQP connection (lane monitoring, dead letters): Aspire's client, with its health check (in
        // /health/ready) and tracing. Not opened at startup and no connect retries inside a request: the API must start
        // and answer 503s while RabbitMQ is down. Automatic recovery (the client's default) brings it back after a
        // broker restart; until then a channel cannot be opened and the callers answer 503.
        var rabbitConnectionString = builder.Configuration.GetConnectionString("rabbitmq")
            ?? throw new InvalidOperationException("ConnectionStrings:rabbitmq is not set");
        builder.AddRabbitMQClient("rabbitmq", settings =>
        {
            settings.DisableAutoActivation = true;
            // Aspire's check resolves the connection synchronously on every poll (a blocked pool thread per poll while
            // RabbitMQ is down or stalled); the same library check is registered below on the shared lazy connection.
            settings.DisableHealthChecks = true;
            settings.MaxConnectRetryCount = 0;
            // Applied to the factory below rather than by Aspire (which reads it as exactly one URI), so this one
            // place decides how the connection string maps onto the connection.
            settings.ConnectionString = null;
        }, factory =>
        {
            // One node or every node of a cluster (amqp://u:p@h1:p1,h2:p2/): the connection goes to whichever answers,
            // and the client's recovery moves to another node when that one dies.
            RabbitMqNodes.Parse(rabbitConnectionString).ApplyTo(factory);
            factory.ClientProvidedName = "producer-api-admin";
            factory.RequestedConnectionTimeout = TimeSpan.FromSeconds(3);
            factory.ContinuationTimeout = TimeSpan.FromSeconds(5);
            factory.NetworkRecoveryInterval = TimeSpan.FromSeconds(2);
            // Only the connection is recovered, not what it declared: the error queue is declared once at startup
            // (IoLaneTopologyDeclarer), and a re-declare that failed after a restart would fail the whole recovery.
            factory.TopologyRecoveryEnabled = false;
        });
        builder.Services.AddSingleton<LazyRabbitMqConnection>();
        builder.Services.AddHealthChecks().AddRabbitMQ(
            sp => sp.GetRequiredService<LazyRabbitMqConnection>().GetAsync(TimeSpan.FromSeconds(3)), name: "RabbitMQ.Client", timeout: TimeSpan.FromSeconds(4));
        builder.Services.AddHttpClient<RabbitMqQueueMetrics>(http => http.Timeout = TimeSpan.FromSeconds(2));
        builder.Services.AddSingleton<LaneMonitor>();
        builder.Services.AddSingleton<LaneSampler>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<LaneSampler>());
        builder.Services.AddHostedService<LaneGauges>();
        builder.Services.AddHostedService<IoLaneTopologyDeclarer>();

        builder.Services.AddSingleton<DeadLetterLock>();
        builder.Services.AddSingleton<IDeadLetterLane, CpuDeadLetters>();
        builder.Services.AddSingleton<IDeadLetterLane, IoDeadLetters>();
        builder.Services.AddSingleton<DeadLetterLanes>();

        builder.Services.AddProblemDetails(options => options.CustomizeProblemDetails = Problems.AssignStableType);
        builder.Services.AddExceptionHandler<RedisOutageProblem>();
        builder.AddRequestLimits();
        builder.Services.AddApiDocument();

        builder.AddIoLanePublishing();
        return builder;
    }

    /// <summary>
    /// Kestrel refuses bodies past the largest the API accepts before any of it is buffered; the ingest path checks the
    /// exact per-endpoint limit on top (413 either way).
    /// </summary>
    private static void AddRequestLimits(this IHostApplicationBuilder builder)
    {
        var ingest = builder.Configuration.GetSection("Ingest").Get<IngestOptions>() ?? new IngestOptions();
        builder.Services.Configure<Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions>(kestrel =>
        {
            kestrel.Limits.MaxRequestBodySize = Math.Max(ingest.MaxBatchBytes, ingest.MaxEventBytes);
            kestrel.Limits.MaxRequestHeadersTotalSize = 32 * 1024;
            kestrel.AddServerHeader = false;
        });
        // Off by default: running request code on Kestrel's socket threads cost more CPU per single POST, not less, in
        // paired runs (docs/benchmarks-history.md, "Session 6: API"). Safe to turn on only while nothing on a request path blocks a
        // thread (no .Result/.Wait()/synchronous I/O; the one synchronous connect, RabbitMQ's, runs under Task.Run), and
        // then a large batch is still parsed and validated on a socket thread, holding every other socket behind it:
        // never together with DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 (docs/operations.md).
        if (builder.Configuration.GetValue("Performance:KestrelInlineScheduling", false))
        {
            builder.Services.Configure<Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets.SocketTransportOptions>(
                sockets => sockets.UnsafePreferInlineScheduling = true);
        }
    }

    private static void AddIoLanePublishing(this IHostApplicationBuilder builder)
    {
        var connectionString = builder.Configuration.GetConnectionString("rabbitmq")
            ?? throw new InvalidOperationException("ConnectionStrings:rabbitmq is not set");

        builder.Services.AddIoLanePublisher(connectionString);
    }
}
