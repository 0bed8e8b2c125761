using RabbitMQ.Client;

namespace EventPipeline.Producer.Monitoring;

/// <summary>
/// The API's own AMQP connection (lane monitoring, dead-letter work; MassTransit keeps its own for publishing), opened
/// on first use so the API starts and answers 503s while RabbitMQ is still down. The connection itself is Aspire's
/// (<c>AddRabbitMQClient</c>: one <see cref="IConnection"/> singleton with automatic recovery after a broker restart, its
/// health check and tracing); a connect that failed is not kept by the container, so the next call tries again.
/// </summary>
/// <remarks>
/// Hand-written only because Aspire's client connects synchronously while the singleton is resolved and takes no
/// cancellation: resolving it off the caller's thread keeps a request's deadline (a SIGSTOPped broker accepts the TCP
/// connect and then never answers the handshake).
/// </remarks>
public sealed class LazyRabbitMqConnection(IServiceProvider services)
{
    public Task<IConnection> GetAsync(CancellationToken cancellationToken) =>
        Task.Run(services.GetRequiredService<IConnection>, cancellationToken).WaitAsync(cancellationToken);
}
