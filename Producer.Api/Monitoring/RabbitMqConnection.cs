using RabbitMQ.Client;

namespace EventPipeline.Producer.Monitoring;

/// <summary>
/// One lazily opened AMQP connection for the API's own broker reads and dead-letter work (MassTransit keeps its own for
/// publishing). Reopened after the broker comes back; every open is bounded by a timeout so no request hangs.
/// </summary>
public sealed class RabbitMqConnection(IConfiguration configuration, ILogger<RabbitMqConnection> logger) : IAsyncDisposable
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private IConnection? _connection;

    public async Task<IConnection> GetAsync(CancellationToken cancellationToken)
    {
        if (_connection is { IsOpen: true } open)
        {
            return open;
        }

        await _gate.WaitAsync(cancellationToken);
        try
        {
            if (_connection is { IsOpen: true } reopened)
            {
                return reopened;
            }

            if (_connection is not null)
            {
                await _connection.DisposeAsync();
                _connection = null;
            }

            var factory = new ConnectionFactory
            {
                ClientProvidedName = "producer-api-admin",
                RequestedConnectionTimeout = TimeSpan.FromSeconds(3),
                ContinuationTimeout = TimeSpan.FromSeconds(5),
                // Reconnection is ours (on the next call), so a dead connection is never silently half-recovered.
                AutomaticRecoveryEnabled = false,
            };
            // One node or every node of a cluster: the connection goes to whichever answers.
            EventPipeline.Shared.RabbitMqNodes.Parse(configuration.GetConnectionString("rabbitmq")
                ?? throw new InvalidOperationException("ConnectionStrings:rabbitmq is not set")).ApplyTo(factory);
            _connection = await factory.CreateConnectionAsync(cancellationToken);
            logger.LogInformation("Connected to RabbitMQ for lane monitoring and dead-letter operations");
            return _connection;
        }
        finally
        {
            _gate.Release();
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_connection is not null)
        {
            await _connection.DisposeAsync();
        }
    }
}
