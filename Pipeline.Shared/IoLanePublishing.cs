using System.Reflection;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace EventPipeline.Shared;

public static class IoLanePublishing
{
    /// <summary>
    /// The I/O lane's publisher (<see cref="IoEventPublisher"/>) on its own connection (<see cref="IoLaneConnection"/>):
    /// publisher confirms (the await returns once RabbitMQ holds every message), mandatory publishes (a message no queue
    /// takes is an error the caller answers with a 503 or a retry, not a confirm and a drop), the lane's topology
    /// declared by the publisher itself, and a channel that failed replaced by a fresh one. Used by Producer.Api and by
    /// Worker.Cpu's next stage. Startup does not wait for the broker: readiness (/health/ready) reports it, and
    /// publishes time out into a 503 or a retry instead of hanging.
    /// </summary>
    public static IServiceCollection AddIoLanePublisher(this IServiceCollection services, string connectionString)
    {
        var nodes = RabbitMqNodes.Parse(connectionString);
        var clientName = (Assembly.GetEntryAssembly()?.GetName().Name ?? "eventpipeline") + "-io-publisher";
        services.AddSingleton(_ => new IoLaneConnection(nodes, clientName));
        services.AddSingleton(sp => new IoEventPublisher(sp.GetRequiredService<IoLaneConnection>(), sp.GetRequiredService<ILogger<IoEventPublisher>>()));
        return services;
    }
}
