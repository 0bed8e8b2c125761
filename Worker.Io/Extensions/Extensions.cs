using EventPipeline.Shared;
using EventPipeline.Worker.Io.Delivery;
using MassTransit;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace Microsoft.Extensions.Hosting;

public static class IoLaneExtensions
{
    public static IHostApplicationBuilder AddIoLane(this IHostApplicationBuilder builder)
    {
        // Aspire builds the Redis options (connection string, Aspire:StackExchange:Redis section) and the health check;
        // the connection itself is RedisConnectionAtStart's, made in the background at start and never by a message
        // (Aspire's own factory connects synchronously at the first resolve). The lane's receive endpoints depend on it.
        // Forced whatever the configuration says: auto-activation would resolve the connection while the host starts
        // and, with Redis down, stop the host (a crash loop in exactly the case RedisConnectionAtStart handles); Aspire's
        // tracing attaches only to the connection Aspire's own factory makes, which this process never uses.
        builder.AddRedisClient("redis",
            configureSettings: settings => { settings.DisableAutoActivation = true; settings.DisableTracing = true; },
            configureOptions: options => options.AbortOnConnectFail = false);
        builder.Services.AddSingleton<RedisConnectionAtStart>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<RedisConnectionAtStart>());
        builder.Services.Replace(ServiceDescriptor.Singleton<IConnectionMultiplexer>(sp => sp.GetRequiredService<RedisConnectionAtStart>().Connection));

        builder.Services.AddOptions<IoLaneOptions>().BindConfiguration("IoLane").ValidateDataAnnotations()
            .Validate(o => o.ConsumerStopTimeout <= o.StopTimeout, "IoLane:ConsumerStopTimeout must not exceed IoLane:StopTimeout")
            .Validate(o => o.RetryMinInterval <= o.RetryMaxInterval, "IoLane:RetryMinInterval must not exceed IoLane:RetryMaxInterval")
            .ValidateOnStart();
        builder.Services.AddOptions<DownstreamOptions>().BindConfiguration("Downstream").ValidateDataAnnotations()
            .Validate(o => DownstreamOrigins.OriginOf(o.BaseAddress) is not null, "Downstream:BaseAddress must be an absolute http or https URL")
            .Validate(o => o.TryGetOrigins(out _, out _),
                "Downstream:AllowedOrigins must hold origins (scheme://host[:port], http or https) and Downstream:AllowedHosts host names")
            .Validate(o => o.Timeout > TimeSpan.Zero, "Downstream:Timeout must be positive")
            .ValidateOnStart();
        builder.Services.AddOptions<TestEventsOptions>().BindConfiguration("TestEvents");
        builder.Services.AddOptions<StatusOptions>().BindConfiguration("Status");
        builder.Services.AddSingleton<EventStatusStore>();
        builder.Services.AddSingleton<StatusWriteCoalescer>();
        builder.Services.AddSingleton<IoEventConsumer>();

        // Everything below reads the validated IoLaneOptions from the container (never a raw Get<> of the section, which
        // skips the [Range] checks): a bad setting fails the start with its name instead of configuring the bus with it.
        builder.Services.AddHttpClient(DownstreamClient.HttpClientName, (sp, http) =>
                http.Timeout = sp.GetRequiredService<IOptions<DownstreamOptions>>().Value.Timeout)
            // The client lives as long as the process (it holds the rate limiters): recycle connections for DNS changes.
            // No redirects: a Location header is the downstream's say, and following it would carry the POST to an
            // origin nobody allowed. A 3xx is a failure (DownstreamClient).
            // One connection per message the endpoint runs at once, no more: a burst never opens more sockets to a
            // downstream than there can be calls, and the pool keeps them between bursts (idle timeout) instead of
            // paying the handshakes again.
            .ConfigurePrimaryHttpMessageHandler(sp => new SocketsHttpHandler
            {
                PooledConnectionLifetime = TimeSpan.FromMinutes(5),
                PooledConnectionIdleTimeout = TimeSpan.FromMinutes(2),
                MaxConnectionsPerServer = sp.GetRequiredService<IOptions<IoLaneOptions>>().Value.ConcurrentMessageLimit,
                AllowAutoRedirect = false,
                // No cookie jar: one would be shared by every event of every submitter, so a Set-Cookie in one
                // downstream answer went back with every later webhook to that origin, whoever's event it was; and
                // the jar was read for every call and written for every answer that set one.
                UseCookies = false,
            })
            // No IHttpClientFactory logging handlers: they open a log scope for every call and log only at Information,
            // which this client's category never shows; DownstreamClient logs every failure itself.
            .RemoveAllLoggers()
            // No handlers from ConfigureHttpClientDefaults either (ServiceDefaults adds service discovery to every
            // client): the origin DownstreamClient checked against the allow-list is the one called, never one a
            // resolver swapped in for a "services:<host>" entry; no URI is rebuilt for every call (docs/benchmarks.md,
            // "Session 7: I/O lane"); and a retrying handler added there later could not repeat deliveries behind the
            // lane's own retry policy.
            .ConfigureAdditionalHttpMessageHandlers((handlers, _) => handlers.Clear());
        builder.Services.AddSingleton(sp => new DownstreamClient(
            sp.GetRequiredService<IHttpClientFactory>().CreateClient(DownstreamClient.HttpClientName),
            sp.GetRequiredService<IOptions<DownstreamOptions>>(),
            sp.GetRequiredService<ILogger<DownstreamClient>>()));

        var connectionString = builder.Configuration.GetConnectionString("rabbitmq")
            ?? throw new InvalidOperationException("ConnectionStrings:rabbitmq is not set");

        builder.Services.AddMassTransit(bus =>
        {
            bus.AddConsumer<BrokerDeadLetterStatusConsumer>();
            bus.UsingRabbitMq((context, cfg) =>
            {
                var lane = context.GetRequiredService<IOptions<IoLaneOptions>>().Value;
                // One node, or every node of a cluster (MassTransit moves to another when its node dies).
                RabbitMqNodes.Parse(connectionString).ConfigureHost(cfg);
                // Without this the error queue inherits the lane queue's delivery limit and dead-letter target, and
                // clashes with the dead-letter binding below (PRECONDITION_FAILED: the fault is never moved).
                cfg.SendTopology.ConfigureErrorSettings = IoLaneTopology.ConfigureErrorQueue;
                cfg.ReceiveEndpoint(IoLaneTopology.QueueName, endpoint =>
                {
                    // Same arguments as the API's publish binding (PRECONDITION_FAILED otherwise), and the error
                    // exchange/queue declared up front so the broker's delivery-limit dead-lettering has a target.
                    IoLaneTopology.ConfigureQueue(endpoint);
                    endpoint.BindDeadLetterQueue(IoLaneTopology.ErrorQueueName, IoLaneTopology.ErrorQueueName, IoLaneTopology.ConfigureErrorQueue);
                    endpoint.PrefetchCount = lane.PrefetchCount;
                    endpoint.ConcurrentMessageLimit = lane.ConcurrentMessageLimit;
                    // In-memory retries: the delayed-exchange plugin that scheduled redelivery needs is not on Debian's RabbitMQ.
                    endpoint.UseMessageRetry(retry =>
                    {
                        retry.Exponential(lane.MaxAttempts - 1, lane.RetryMinInterval, lane.RetryMaxInterval, lane.RetryIntervalDelta);
                        retry.Ignore<PermanentDownstreamException>();
                    });
                    // One consumer instance for every message, not a DI scope and a resolve per message: it holds
                    // nothing of a delivery (every dependency is a singleton), and the scope was 5–7 % of the
                    // worker's CPU per noop event (docs/benchmarks-history.md, "Session 6: I/O lane"). Resolved at the first
                    // message, not while the bus is built: the Redis connection it needs may not be up yet. It must
                    // never be IDisposable: MassTransit's delegate factory disposes what it returns after each message.
                    endpoint.Consumer(() => context.GetRequiredService<IoEventConsumer>());
                    // No basic.consume before the status store's connection is up (the queue is declared, the channel
                    // open): a replica that cannot write statuses leaves the messages to one that can.
                    endpoint.AddDependency(context.GetRequiredService<RedisConnectionAtStart>());
                });

                // Sees a copy of every message entering the error exchange; only the broker's own dead-letters matter.
                cfg.ReceiveEndpoint(BrokerDeadLetterStatusConsumer.QueueName, endpoint =>
                {
                    // Not subscribed to the event's message type: it must never receive live events.
                    endpoint.ConfigureConsumeTopology = false;
                    endpoint.Durable = true;
                    endpoint.SetQuorumQueue();
                    endpoint.Bind(IoLaneTopology.ErrorQueueName);
                    endpoint.PrefetchCount = 16;
                    endpoint.UseMessageRetry(retry => retry.Interval(5, TimeSpan.FromSeconds(1)));
                    endpoint.ConfigureConsumer<BrokerDeadLetterStatusConsumer>(context);
                    // It writes "dead" statuses: it waits for the status store's connection too.
                    endpoint.AddDependency(context.GetRequiredService<RedisConnectionAtStart>());
                });
            });
        });

        builder.Services.AddOptions<MassTransitHostOptions>().Configure<IOptions<IoLaneOptions>>((options, validated) =>
        {
            var lane = validated.Value;
            // The host starts (health endpoints included) without waiting for the endpoints: they wait for Redis.
            options.WaitUntilStarted = false;
            // Without a StopTimeout the bus waits forever for in-flight messages on shutdown. ConsumerStopTimeout is the
            // grace period for in-flight deliveries; after it their CancellationToken fires, the HTTP call is abandoned
            // and the unacked message returns to the queue when the channel closes.
            options.ConsumerStopTimeout = lane.ConsumerStopTimeout;
            options.StopTimeout = lane.StopTimeout;
        });
        builder.Services.AddOptions<HostOptions>().Configure<IOptions<IoLaneOptions>>((o, lane) => o.ShutdownTimeout = lane.Value.StopTimeout + TimeSpan.FromSeconds(5));
        return builder;
    }
}
