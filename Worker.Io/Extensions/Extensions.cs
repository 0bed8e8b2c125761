using EventPipeline.Shared;
using EventPipeline.Worker.Io.Delivery;
using MassTransit;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.Hosting;

public static class IoLaneExtensions
{
    public static IHostApplicationBuilder AddIoLane(this IHostApplicationBuilder builder)
    {
        builder.AddRedisClient("redis", configureOptions: options => options.AbortOnConnectFail = false);

        builder.Services.AddOptions<IoLaneOptions>().BindConfiguration("IoLane").ValidateDataAnnotations().ValidateOnStart();
        builder.Services.AddOptions<DownstreamOptions>().BindConfiguration("Downstream").ValidateDataAnnotations()
            .Validate(o => o.AllowedHosts.Contains(o.BaseAddress.Host, StringComparer.OrdinalIgnoreCase),
                "Downstream:BaseAddress must name a host listed in Downstream:AllowedHosts")
            .ValidateOnStart();
        builder.Services.AddOptions<TestEventsOptions>().BindConfiguration("TestEvents");
        builder.Services.AddOptions<StatusOptions>().BindConfiguration("Status");
        builder.Services.AddSingleton<EventStatusStore>();

        builder.Services.AddHttpClient<DownstreamClient>(DownstreamClient.HttpClientName, (sp, http) =>
            http.Timeout = sp.GetRequiredService<IOptions<DownstreamOptions>>().Value.Timeout);
        // DownstreamClient holds the rate limiters, so it must live as long as the process.
        builder.Services.AddSingleton(sp => new DownstreamClient(
            sp.GetRequiredService<IHttpClientFactory>().CreateClient(DownstreamClient.HttpClientName),
            sp.GetRequiredService<IOptions<DownstreamOptions>>()));

        var lane = builder.Configuration.GetSection("IoLane").Get<IoLaneOptions>() ?? new IoLaneOptions();
        var connectionString = builder.Configuration.GetConnectionString("rabbitmq")
            ?? throw new InvalidOperationException("ConnectionStrings:rabbitmq is not set");

        builder.Services.AddMassTransit(bus =>
        {
            bus.AddConsumer<IoEventConsumer>();
            bus.UsingRabbitMq((context, cfg) =>
            {
                cfg.Host(new Uri(connectionString));
                // Without this the error queue inherits the lane queue's delivery limit and dead-letter target, and
                // clashes with the dead-letter binding below (PRECONDITION_FAILED: the fault is never moved).
                cfg.SendTopology.ConfigureErrorSettings = IoLaneTopology.ConfigureErrorQueue;
                cfg.ReceiveEndpoint(IoLaneTopology.QueueName, endpoint =>
                {
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
                    endpoint.ConfigureConsumer<IoEventConsumer>(context);
                });
            });
        });

        builder.Services.Configure<MassTransitHostOptions>(options =>
        {
            options.WaitUntilStarted = false;
            // Without a StopTimeout the bus waits forever for in-flight messages on shutdown.
            options.StopTimeout = lane.StopTimeout;
        });
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = lane.StopTimeout + TimeSpan.FromSeconds(5));
        return builder;
    }
}
