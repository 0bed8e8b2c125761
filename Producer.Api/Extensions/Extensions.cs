using EventPipeline.Contracts;
using EventPipeline.Producer.Ingest;
using EventPipeline.Producer.Security;
using EventPipeline.Producer.Validation;
using EventPipeline.Shared;
using MassTransit;

namespace Microsoft.Extensions.Hosting;

public static class ProducerExtensions
{
    public static IHostApplicationBuilder AddApplicationServices(this IHostApplicationBuilder builder)
    {
        builder.AddRedisClient("redis", configureOptions: options =>
        {
            // While Redis is unreachable, fail at once (503) instead of queueing writes that might land after we answered.
            options.BacklogPolicy = StackExchange.Redis.BacklogPolicy.FailFast;
            options.AbortOnConnectFail = false;
        });

        builder.Services.AddOptions<RoutingOptions>().BindConfiguration("Routing");
        builder.Services.AddOptions<TestEventsOptions>().BindConfiguration("TestEvents");
        builder.Services.AddOptions<IngestOptions>().BindConfiguration("Ingest");
        builder.Services.AddOptions<StatusOptions>().BindConfiguration("Status");
        builder.Services.AddOptions<ApiKeyOptions>().BindConfiguration("Auth:ApiKeys")
            .Validate(o => o.Submit.Length >= 16 && o.Admin.Length >= 16 && o.Submit != o.Admin,
                "Auth:ApiKeys:Submit and Auth:ApiKeys:Admin must be set, at least 16 characters, and differ")
            .ValidateOnStart();

        builder.Services.AddSingleton<EventRouter>();
        builder.Services.AddSingleton<EventValidator>();
        builder.Services.AddSingleton<EventStatusStore>();
        builder.Services.AddSingleton<ILanePublisher, CpuLanePublisher>();
        builder.Services.AddSingleton<ILanePublisher, IoLanePublisher>();
        builder.Services.AddSingleton<EventIngest>();
        builder.Services.AddSingleton<LaneMonitor>();
        builder.Services.AddLaneGaugeSampler();
        builder.Services.AddProblemDetails();

        builder.AddIoLanePublishing();
        return builder;
    }

    private static void AddIoLanePublishing(this IHostApplicationBuilder builder)
    {
        var connectionString = builder.Configuration.GetConnectionString("rabbitmq")
            ?? throw new InvalidOperationException("ConnectionStrings:rabbitmq is not set");

        builder.Services.AddMassTransit(bus =>
        {
            bus.UsingRabbitMq((_, cfg) =>
            {
                cfg.Host(new Uri(connectionString), host => host.PublisherConfirmation = true);
                // Bind the lane's queue at publish time too, so an event published before any worker ever ran is kept.
                // The queue is bound to the event's own exchange: BindQueue(name, …) declares exchange "name" → queue
                // but never binds the event's exchange to it, so an event published before the worker ran was dropped.
                var eventExchange = cfg.MessageTopology.GetMessageTopology<IoEventSubmitted>().EntityName;
                cfg.Publish<IoEventSubmitted>(publish =>
                    publish.BindQueue(eventExchange, IoLaneTopology.QueueName, IoLaneTopology.ConfigureQueue));
            });
        });
        builder.Services.Configure<MassTransitHostOptions>(options =>
        {
            options.WaitUntilStarted = false;
            options.StopTimeout = TimeSpan.FromSeconds(10);
        });
    }
}
