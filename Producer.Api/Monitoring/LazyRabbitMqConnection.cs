using RabbitMQ.Client;

namespace EventPipeline.Producer.Monitoring;

/// <summary>
/// The API's own AMQP connection (lane monitoring, dead-letter work, the RabbitMQ health check; MassTransit keeps its
/// own for publishing), opened on first use so the API starts and answers 503s while RabbitMQ is still down. The
/// connection itself is Aspire's (<c>AddRabbitMQClient</c>: one <see cref="IConnection"/> singleton with automatic
/// recovery after a broker restart, and tracing); a connect that failed is not kept by the container, so the next call
/// tries again.
/// </summary>
/// <remarks>
/// Hand-written only because Aspire's client connects synchronously while the singleton is resolved and takes no
/// cancellation. One resolve runs at a time, on one pool thread, and every caller awaits it with its own deadline: a
/// SIGSTOPped broker accepts the TCP connect and then never answers the handshake, and a resolve per caller would block
/// a pool thread per request (and per health-check poll) on the container's singleton lock until the connect gives up.
/// </remarks>
public sealed class LazyRabbitMqConnection(IServiceProvider services)
{
    private readonly Lock _gate = new();
    private Task<IConnection>? _resolving;

    public Task<IConnection> GetAsync(CancellationToken cancellationToken) => Resolving().WaitAsync(cancellationToken);

    public Task<IConnection> GetAsync(TimeSpan timeout) => Resolving().WaitAsync(timeout);

    private Task<IConnection> Resolving()
    {
        lock (_gate)
        {
            // A failed connect is tried again by the next caller; a pending one is shared; a made one is kept (the
            // container keeps the same singleton, and its automatic recovery follows broker restarts).
            if (_resolving is null || _resolving.IsFaulted || _resolving.IsCanceled)
            {
                _resolving = Task.Run(services.GetRequiredService<IConnection>);
            }

            return _resolving;
        }
    }
}
