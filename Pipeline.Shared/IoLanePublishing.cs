using MassTransit;
using Microsoft.Extensions.DependencyInjection;

namespace EventPipeline.Shared;

public static class IoLanePublishing
{
    /// <summary>
    /// A MassTransit bus that only publishes to the I/O lane, with publisher confirms (the await returns once RabbitMQ
    /// holds the message) and the lane's queue bound at publish time. Used by Producer.Api and by Worker.Cpu's next stage.
    /// Startup does not wait for the broker: readiness (/health/ready) reports it, and publishes time out into a 503 or
    /// a retry instead of hanging.
    /// </summary>
    public static IServiceCollection AddIoLanePublisher(this IServiceCollection services, string connectionString)
    {
        services.AddMassTransit(bus => bus.UsingRabbitMq((_, cfg) =>
        {
            cfg.Host(new Uri(connectionString), host => host.PublisherConfirmation = true);
            IoLaneTopology.BindQueueOnPublish(cfg);
        }));
        services.Configure<MassTransitHostOptions>(options =>
        {
            options.WaitUntilStarted = false;
            options.StopTimeout = TimeSpan.FromSeconds(10);
        });
        return services;
    }
}
