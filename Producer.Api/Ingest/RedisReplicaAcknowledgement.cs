using System.Net;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.Ingest;

/// <summary>
/// <see cref="IngestOptions.RedisReplicaAcks"/>: a Redis write is answered 202 — or 200 for a repeat of it — only once
/// <c>WAIT</c> counts that many replicas holding it.
/// <para>
/// <c>WAIT</c> counts the replicas that reached the replication offset of its own connection's last write, and a
/// primary's replication stream is one ordered log. So a probe write made after the caller's write was applied, followed
/// by <c>WAIT</c> on the probe's connection, covers the caller's write whichever connection made it. The probes and
/// <c>WAIT</c>s run on a connection of their own, one round at a time, each round covering every caller that was waiting
/// when it began (a group commit): a <c>WAIT</c> blocks its connection until the replicas answer, and on the API's shared
/// connection it would hold every other Redis command (idempotency checks, status reads, <c>/lanes</c>) behind it.
/// </para>
/// Hand-written: StackExchange.Redis has no call for "wait for replicas" beyond sending <c>WAIT</c> itself.
/// <para>
/// The rounds' connection has the settings of the shared one (<paramref name="redis"/>, the options Aspire's
/// <c>AddRedisClient("redis")</c> builds, with the API's <c>ConfigureRedis</c> applied): it read <c>ConnectionStrings:redis</c>
/// alone, so with Redis set only in Aspire's section every round failed, and settings given there were missing.
/// </para>
/// </summary>
public sealed class RedisReplicaAcknowledgement(
    IConnectionMultiplexer shared, IOptions<ConfigurationOptions> redis, IOptions<IngestOptions> options, ILogger<RedisReplicaAcknowledgement> logger)
    : IAsyncDisposable
{
    /// <summary>
    /// The key the probe writes (one small string, expiring). Outside every namespace an event id can reach
    /// (<c>ingest:&lt;id&gt;</c> reservations, <c>event:&lt;id&gt;</c> statuses): as <c>ingest:replica-ack-probe</c> it made an
    /// event named <c>replica-ack-probe</c> look held, answered "duplicate" and never written.
    /// </summary>
    public static readonly RedisKey ProbeKey = "replica-acks.probe";

    private readonly Lock _gate = new();
    private TaskCompletionSource<EndPoint>? _next;
    private bool _running;
    private Task<IConnectionMultiplexer>? _connecting;
    private OwnRedisConnection? _connection;
    private bool _disposed;

    /// <summary>Wraps the rounds' own connection once made (tests inject the client's failures with it).</summary>
    internal Func<IConnectionMultiplexer, IConnectionMultiplexer>? WrapConnection { get; init; }

    public bool Enabled => options.Value.RedisReplicaAcks > 0;

    /// <summary>The primary a write made now goes to; identified before the write, compared after the round.</summary>
    public async Task<EndPoint?> PrimaryAsync() =>
        Enabled ? await shared.GetDatabase().IdentifyEndpointAsync(ProbeKey, CommandFlags.DemandMaster).AsRedisFailure() : null;

    /// <summary>
    /// Returns once the replicas hold every write the caller made (and saw answered) on <paramref name="primary"/> before
    /// this call. Throws a <see cref="RedisException"/> when fewer replicas answered within
    /// <see cref="IngestOptions.RedisReplicaAckTimeout"/>, or when the round ran on another server than the one the
    /// caller wrote to (a failover in between): the caller's write is then in doubt.
    /// </summary>
    public async Task WaitAsync(EndPoint? primary, CancellationToken cancellationToken)
    {
        if (!Enabled)
        {
            return;
        }

        Task<EndPoint> round;
        lock (_gate)
        {
            // Join the round that has not begun yet: its probe is written after this caller's write was applied.
            _next ??= new TaskCompletionSource<EndPoint>(TaskCreationOptions.RunContinuationsAsynchronously);
            round = _next.Task;
            if (!_running)
            {
                _running = true;
                _ = Task.Run(RunRoundsAsync, CancellationToken.None);
            }
        }

        var server = await round.WaitAsync(cancellationToken);
        if (primary is null || !server.Equals(primary))
        {
            throw new RedisConnectionException(ConnectionFailureType.UnableToConnect,
                $"the Redis primary changed from {primary?.ToString() ?? "(none)"} to {server} since the write: it may not be on the new one");
        }
    }

    private async Task RunRoundsAsync()
    {
        while (true)
        {
            TaskCompletionSource<EndPoint> round;
            lock (_gate)
            {
                if (_next is null)
                {
                    _running = false;
                    return;
                }

                (round, _next) = (_next, null);
            }

            try
            {
                round.SetResult(await OneRoundAsync());
            }
            catch (Exception ex)
            {
                logger.LogWarning(ex, "Redis replicas did not acknowledge the writes of a round");
                // The client's writer-completed race (StackExchange.Redis#2692) as its connection failure: the callers
                // answer a RedisException with the 503 naming the request's uncertain ids, the raw race with none. So is
                // a dispose that raced this round's use of the connection (the API stopping).
                round.SetException(
                    RedisFailures.IsConnectionLostMidWrite(ex) ? RedisFailures.AsConnectionFailure(ex)
                    : ex is ObjectDisposedException && IsDisposed() ? Stopping()
                    : ex);
            }
        }
    }

    private bool IsDisposed()
    {
        lock (_gate)
        {
            return _disposed;
        }
    }

    private async Task<EndPoint> OneRoundAsync()
    {
        var required = options.Value.RedisReplicaAcks;
        // WAIT 0 would wait forever: a timeout is always given.
        var timeoutMs = Math.Max(1, (long)options.Value.RedisReplicaAckTimeout.TotalMilliseconds);
        var connection = await ConnectionAsync();
        var db = connection.GetDatabase();
        var primary = await db.IdentifyEndpointAsync(ProbeKey, CommandFlags.DemandMaster)
            ?? throw new RedisConnectionException(ConnectionFailureType.UnableToConnect, "no Redis primary");
        IServer server;
        try
        {
            server = connection.GetServer(primary);
        }
        catch (ArgumentException ex)
        {
            throw new RedisConnectionException(ConnectionFailureType.UnableToConnect, $"the Redis primary {primary} is gone", ex);
        }

        // The probe and the WAIT go to the same server over its one interactive connection, in this order.
        await db.StringSetAsync(ProbeKey, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(), TimeSpan.FromMinutes(5), flags: CommandFlags.DemandMaster);
        var acknowledged = (long)await server.ExecuteAsync("WAIT", required, timeoutMs);
        if (acknowledged < required)
        {
            throw new RedisException($"{acknowledged} of the {required} Redis replicas required acknowledged the write within {timeoutMs} ms");
        }

        return primary;
    }

    private Task<IConnectionMultiplexer> ConnectionAsync()
    {
        lock (_gate)
        {
            if (_disposed)
            {
                // The connection an earlier round made is disposed with this: using it would throw ObjectDisposedException,
                // which a caller answers with a 500 instead of the 503 naming its uncertain ids.
                throw Stopping();
            }

            if (_connecting is null || _connecting.IsFaulted || _connecting.IsCanceled)
            {
                var settings = redis.Value.Clone();
                settings.ClientName = "producer-api-replica-acks";
                // Made again by the next round after a failed connect (there is no other retry): each failure must leave
                // nothing open, which the client's own Sentinel connect does not (OwnRedisConnection).
                _connecting = ConnectAsync(settings);
            }

            return _connecting;
        }
    }

    private async Task<IConnectionMultiplexer> ConnectAsync(ConfigurationOptions settings)
    {
        var made = await OwnRedisConnection.ConnectAsync(settings);
        bool disposed;
        lock (_gate)
        {
            // Only a failed connect is made again: at most one succeeds.
            disposed = _disposed;
            _connection = disposed ? null : made;
        }

        if (disposed)
        {
            await made.DisposeAsync();
            // A Redis failure, as a round's other failures: the callers answer it with the 503 naming the uncertain ids.
            throw Stopping();
        }

        return WrapConnection is null ? made.Connection : WrapConnection(made.Connection);
    }

    private static RedisConnectionException Stopping() =>
        new(ConnectionFailureType.UnableToConnect, "the API is stopping: the replica-ack connection is disposed");

    public async ValueTask DisposeAsync()
    {
        OwnRedisConnection? connection;
        lock (_gate)
        {
            _disposed = true;
            connection = _connection;
            _connection = null;
        }

        if (connection is not null)
        {
            await connection.DisposeAsync();
        }
    }
}
