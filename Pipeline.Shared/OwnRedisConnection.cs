using StackExchange.Redis;

namespace EventPipeline.Shared;

/// <summary>
/// A connection a service opens beside its shared one (Producer.Api's replica-ack rounds, Worker.Cpu's blocking reader),
/// connected as <c>ConnectionMultiplexer.ConnectAsync</c> connects it — through Sentinel when the settings name a
/// service — but with the Sentinel connection held here and disposed after the connection.
/// </summary>
/// <remarks>
/// StackExchange.Redis's own Sentinel connect (2.13 and 3.x) makes a Sentinel connection and then the primary's; when
/// the primary step throws (no Sentinel answered, so the connection is "not a Sentinel connection"; no primary known
/// under the service name; a failover racing the switch) it leaves the Sentinel connection open, with its sockets,
/// subscription and reconnect handler. A caller that connects again after each failure kept one more open per failure.
/// Here a failed primary step disposes it. On success it is the connection's Sentinel for its life (it follows
/// failovers for it) and is disposed with it. <see cref="RedisConnectLoop"/> does the same for the shared connection,
/// with its own retries.
/// </remarks>
public sealed class OwnRedisConnection : IAsyncDisposable
{
    private readonly ConnectionMultiplexer? _sentinel;

    private OwnRedisConnection(ConnectionMultiplexer connection, ConnectionMultiplexer? sentinel) => (Connection, _sentinel) = (connection, sentinel);

    public ConnectionMultiplexer Connection { get; }

    /// <summary>
    /// Connects with <paramref name="settings"/>; throws what the client's connect throws, with the Sentinel connection
    /// it made disposed. A primary connection the client itself began and dropped inside a failed primary step is not
    /// reachable from here: it is closed when the GC collects it (the client gives no handle to dispose it sooner).
    /// </summary>
    public static async Task<OwnRedisConnection> ConnectAsync(ConfigurationOptions settings)
    {
        if (string.IsNullOrEmpty(settings.ServiceName))
        {
            return new OwnRedisConnection(await ConnectionMultiplexer.ConnectAsync(settings), null);
        }

        var sentinel = await ConnectionMultiplexer.SentinelConnectAsync(settings.Clone());
        try
        {
            // Synchronous inside the client, as in its own Sentinel connect (up to connectTimeout while the primary does
            // not answer).
            return new OwnRedisConnection(sentinel.GetSentinelMasterConnection(settings), sentinel);
        }
        catch
        {
            await sentinel.DisposeAsync();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await Connection.DisposeAsync();
        if (_sentinel is not null)
        {
            await _sentinel.DisposeAsync();
        }
    }
}
