using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace EventPipeline.Shared;

/// <summary>
/// The I/O-lane publishers' own AMQP connection, opened on first use so a service starts (and answers 503s, or retries
/// its forwards) while RabbitMQ is down. A connect that failed is tried again by the next caller; a connection that was
/// made is kept, and the client's automatic recovery follows a broker restart or moves to another node of a cluster.
/// </summary>
/// <remarks>
/// A dedicated connection rather than the API's shared one (Aspire's <c>AddRabbitMQClient</c>, used for monitoring and
/// dead letters): Worker.Cpu publishes too and has no Aspire client, a dead-letter scan or a queue count never waits
/// behind a burst of publishes on the same socket, and the broker's connection-level flow control on the publishers
/// does not stall the health check that should report it. Only the connection is recovered, not what it declared
/// (<see cref="IoEventPublisher"/> declares the lane again after every recovery, see <see cref="Generation"/>).
/// </remarks>
public sealed class IoLaneConnection(RabbitMqNodes nodes, string clientName) : IAsyncDisposable
{
    private readonly Lock _gate = new();
    private Task<IConnection>? _connecting;
    private int _generation;

    /// <summary>When the connection was last seen shut down without having recovered since (ticks; 0 = open).</summary>
    private long _shutDownAt;
    private IConnection? _current;
    private bool _disposed;

    /// <summary>
    /// A connection shut down this long without recovering is given up and made anew: RabbitMQ.Client's automatic
    /// recovery does not start after some closes (an application-initiated close, a server close such as
    /// ACCESS_REFUSED) and stops for good when its loop fails, and every channel asked of such a connection throws.
    /// Several of the recovery's own 2-second attempts fit in it.
    /// </summary>
    private static readonly TimeSpan GiveUpRecoveryAfter = TimeSpan.FromSeconds(20);

    /// <summary>
    /// The message exchange's address as MassTransit writes it into an envelope (<c>destinationAddress</c>,
    /// <c>rabbitmq://host:port/vhost/exchange</c>): the consumer's spans take their <c>messaging.system</c> from its scheme.
    /// </summary>
    public Uri ExchangeAddress { get; } = new($"rabbitmq://{nodes.FirstNode.Authority}{nodes.FirstNode.AbsolutePath.TrimEnd('/')}/{IoLaneTopology.MessageExchange}");

    /// <summary>Changes whenever the connection is made or recovered: what was declared before may be gone.</summary>
    public int Generation => Volatile.Read(ref _generation);

    public Task<IConnection> GetAsync(CancellationToken cancellationToken)
    {
        lock (_gate)
        {
            // A connection opened after dispose would belong to nobody.
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_connecting is null || _connecting.IsFaulted || _connecting.IsCanceled)
            {
                _connecting = ConnectAsync();
            }
            else if (_connecting.IsCompletedSuccessfully && !_connecting.Result.IsOpen && Volatile.Read(ref _shutDownAt) is var since and > 0
                     && TimeProvider.System.GetElapsedTime(since) > GiveUpRecoveryAfter)
            {
                var abandoned = _connecting.Result;
                // No longer the connection in use before it is disposed: its own shutdown (an application close) must
                // not start the clock that would give up its successor at once.
                _current = null;
                Volatile.Write(ref _shutDownAt, 0);
                _connecting = ConnectAsync();
                _ = abandoned.DisposeAsync().AsTask().ContinueWith(static _ => { }, TaskScheduler.Default);
            }

            return _connecting.WaitAsync(cancellationToken);
        }
    }

    private async Task<IConnection> ConnectAsync()
    {
        var factory = new ConnectionFactory
        {
            ClientProvidedName = clientName,
            AutomaticRecoveryEnabled = true,
            TopologyRecoveryEnabled = false,
            NetworkRecoveryInterval = TimeSpan.FromSeconds(2),
            RequestedConnectionTimeout = TimeSpan.FromSeconds(5),
            ContinuationTimeout = TimeSpan.FromSeconds(10),
        };
        nodes.ApplyTo(factory);
        // Not the caller's token: the connect is shared, and one caller giving up must not fail it for the others.
        var connection = await factory.CreateConnectionAsync(CancellationToken.None);
        // Each handler acts only while its own connection is the one in use: a given-up one's events must not touch its
        // successor's clock.
        connection.RecoverySucceededAsync += (_, _) =>
        {
            if (ReferenceEquals(Volatile.Read(ref _current), connection))
            {
                Volatile.Write(ref _shutDownAt, 0);
                Interlocked.Increment(ref _generation);
            }

            return Task.CompletedTask;
        };
        connection.ConnectionShutdownAsync += (_, shutdown) =>
        {
            if (ReferenceEquals(Volatile.Read(ref _current), connection))
            {
                RecordShutdown(shutdown);
            }

            return Task.CompletedTask;
        };

        bool disposed;
        lock (_gate)
        {
            disposed = _disposed;
            if (!disposed)
            {
                _current = connection;
                Volatile.Write(ref _shutDownAt, 0);
            }
        }

        if (disposed)
        {
            await connection.DisposeAsync();
            throw new ObjectDisposedException(nameof(IoLaneConnection));
        }

        // A shutdown between the connect and the handlers raised its event to nobody: recorded here instead.
        if (connection.CloseReason is { } closed)
        {
            RecordShutdown(closed);
        }

        Interlocked.Increment(ref _generation);
        return connection;
    }

    private void RecordShutdown(ShutdownEventArgs shutdown)
    {
        // Closed by this process (not by us: by a library or a test): recovery never starts, so give it up at once.
        var since = shutdown.Initiator == ShutdownInitiator.Application ? 1 : TimeProvider.System.GetTimestamp();
        Interlocked.CompareExchange(ref _shutDownAt, since, 0);
    }

    public async ValueTask DisposeAsync()
    {
        Task<IConnection>? connecting;
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            // A connect still running sees this and disposes what it made.
            _disposed = true;
            connecting = _connecting;
        }

        if (connecting is { IsCompleted: false })
        {
            // A connect past its own disposed check (it installed its connection just before this dispose) finishes
            // and returns that connection to nobody: wait for it (bounded) and close it here.
            try
            {
                await connecting.WaitAsync(TimeSpan.FromSeconds(10));
            }
            catch (Exception)
            {
                // It failed or took too long: nothing of it to close (a connect that saw the flag disposed its own).
            }
        }

        if (connecting is { IsCompletedSuccessfully: true })
        {
            var connection = connecting.Result;
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                await connection.CloseAsync(timeout.Token);
            }
            catch (Exception)
            {
                // Shutting down: a broker that does not answer the close must not hold the process.
            }

            await connection.DisposeAsync();
        }
    }
}
