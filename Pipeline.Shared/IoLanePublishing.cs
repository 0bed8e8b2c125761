using MassTransit;
using Microsoft.Extensions.DependencyInjection;

namespace EventPipeline.Shared;

public static class IoLanePublishing
{
    /// <summary>
    /// A MassTransit bus that only publishes to the I/O lane, with publisher confirms (the await returns once RabbitMQ
    /// holds the message) and the lane's queue bound at publish time. Used by Producer.Api and by Worker.Cpu's next stage.
    /// Every publish is mandatory: RabbitMQ confirms a message that no queue takes (the queue was deleted, or lost in a
    /// broker reset while the connection, and with it MassTransit's "already declared", lived on) and drops it, so only
    /// a mandatory publish turns that into an exception the caller can answer with a 503 or a retry.
    /// Startup does not wait for the broker: readiness (/health/ready) reports it, and publishes time out into a 503 or
    /// a retry instead of hanging.
    /// </summary>
    public static IServiceCollection AddIoLanePublisher(this IServiceCollection services, string connectionString)
    {
        services.AddMassTransit(bus => bus.UsingRabbitMq((_, cfg) =>
        {
            RabbitMqNodes.Parse(connectionString).ConfigureHost(cfg, host => host.PublisherConfirmation = true);
            cfg.ConfigurePublish(publish => publish.UseExecute(context => context.Mandatory = true));
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
