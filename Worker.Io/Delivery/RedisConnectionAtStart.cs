using EventPipeline.Shared;
using MassTransit.Transports;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Io.Delivery;

/// <summary>
/// The status store's Redis connection, made in the background from the host's start and tried again
/// until it is up; it is the process's only <see cref="IConnectionMultiplexer"/>. Guarantee: the I/O lane's receive
/// endpoints (a MassTransit <see cref="IReceiveEndpointDependency"/>) take no message before the connection serves, and
/// no message's thread ever connects. Until then the queue keeps every message for a replica that can serve it, and the
/// readiness check fails (the Redis check cannot resolve the connection, the bus check has endpoints not ready).
/// </summary>
/// <remarks>
/// What it replaces: Aspire's client connects synchronously the first time the multiplexer is resolved, and a connect
/// that failed is not kept, so every message that needed the connection connected again. Under the Sentinel topology,
/// with <c>AbortOnConnectFail=false</c>, a first connect that times out before any Sentinel answers leaves the
/// Sentinel multiplexer's server type at its default, and StackExchange.Redis then throws "The ConnectionMultiplexer is
/// not a Sentinel connection. Detected as: Standalone" (GetSentinelMasterConnection; the configuration was right, the
/// Sentinels just had not answered yet). With a burst's prefetched messages each blocking a thread on that connect
/// (serialized by the container's singleton lock, each one leaking a half-made Sentinel multiplexer that keeps
/// reconnecting), a replica started on a busy machine never caught up (session 7's CI, ClusterTopologyTests); the
/// messages it took failed their attempts and went to the error queue.
/// <para>
/// How it connects is <see cref="RedisConnectLoop"/>'s, shared with Producer.Api and Worker.Cpu: each attempt with
/// <c>AbortOnConnectFail=true</c> (a failed one throws and disposes what it made; Aspire's <c>false</c> cannot keep
/// retrying a Sentinel connect in the background anyway: the discovery step throws at once), on a thread of its own,
/// under Sentinel one Sentinel connection kept across attempts, 1 s doubling to 15 s between them. The options are the
/// ones Aspire built from <c>ConnectionStrings:redis</c> and the <c>Aspire:StackExchange:Redis</c> section, so nothing
/// else changes; Aspire's Redis tracing is forced off in this service (IoLaneExtensions), so no instrumentation needs
/// the connection.
/// </para>
/// <para>
/// Shutdown: the attempts stop at <see cref="IHostApplicationLifetime.ApplicationStopping"/>, which fires before any
/// hosted service stops. MassTransit's hosted service stops before this one and cannot stop a bus whose start (its
/// endpoints waiting here) has not returned, so a connect that completed after that signal would let the endpoints
/// consume while the process exits; the loop disposes such a connection instead, and <see cref="Ready"/> is cancelled.
/// </para>
/// <para>
/// Failures: a Redis failure (including the <see cref="AggregateException"/> of Redis failures that the Sentinel's
/// primary switch throws when a failover races the connect) is retried without end. Anything else cannot heal by
/// retrying (a connection string without endpoints or with an unknown keyword, a Sentinel setup without a service
/// name): it is logged once as critical, naming the setting, <see cref="Ready"/> is cancelled and the process stops with
/// exit code 1; a background service that throws would stop the host with exit code 0 (dotnet/runtime#67146), which a
/// supervisor reads as a clean stop.
/// </para>
/// </remarks>
public sealed class RedisConnectionAtStart(
    IOptions<ConfigurationOptions> options, IHostApplicationLifetime lifetime, ILoggerFactory loggerFactory, ILogger<RedisConnectionAtStart> logger)
    : BackgroundService, IReceiveEndpointDependency
{
    private readonly RedisConnectLoop _connect = new(options, lifetime, loggerFactory);
    private readonly TaskCompletionSource _connected = NewReady(lifetime);
    private ConnectionMultiplexer? _connection;

    /// <summary>
    /// Cancelled at <see cref="IHostApplicationLifetime.ApplicationStopping"/> by itself: whichever of a connect and the
    /// stop comes first decides, with no window between a check and the completion; and the gate is answered even when
    /// the host stops before <see cref="ExecuteAsync"/> ever ran (it may not run at all then).
    /// </summary>
    private static TaskCompletionSource NewReady(IHostApplicationLifetime lifetime)
    {
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lifetime.ApplicationStopping.Register(static state => ((TaskCompletionSource)state!).TrySetCanceled(), ready);
        return ready;
    }

    /// <summary>Completes when the connection is up: MassTransit starts consuming on the endpoints that depend on it then.</summary>
    public Task Ready => _connected.Task;

    /// <summary>The connection; throws a <see cref="RedisConnectionException"/> (a Redis failure) until it is up.</summary>
    public IConnectionMultiplexer Connection => Volatile.Read(ref _connection)
        ?? throw new RedisConnectionException(ConnectionFailureType.UnableToConnect, "The status store is not connected yet: Worker.Io is still connecting to it");

    /// <summary>Whether a failed attempt may succeed later (<see cref="RedisConnectLoop.IsTransient"/>).</summary>
    public static bool IsTransient(Exception exception) => RedisConnectLoop.IsTransient(exception);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var connected = await _connect.ConnectAsync(
            (ex, attempt, delay) => logger.LogWarning(ex, "Status store not reachable (attempt {Attempt}); the I/O lane consumes nothing until it is, next try in {Delay:F0} s",
                attempt, delay.TotalSeconds),
            ex => logger.LogCritical(ex, "The status store cannot be connected with its settings (ConnectionStrings:redis, Aspire:StackExchange:Redis): {Reason}; Worker.Io stops",
                ex.Message),
            stoppingToken);
        if (connected is null)
        {
            // Stopping, or settings no retry can heal: the endpoints never consume.
            _connected.TrySetCanceled();
            return;
        }

        Volatile.Write(ref _connection, connected.Connection);
        if (!_connected.TrySetResult())
        {
            // The stop came first: the endpoints never consume, and the connection is not left open.
            Interlocked.Exchange(ref _connection, null)?.Dispose();
            return;
        }

        logger.LogInformation("Status store connected after {Attempts} attempt(s) in {Elapsed:F1} s; the I/O lane starts consuming",
            connected.Attempts, connected.Elapsed.TotalSeconds);
    }

    public override void Dispose()
    {
        // The attempts' token first (as SentinelConnectionAtStart does); the loop keeps the Sentinel connection for an
        // attempt still running in either order. The container disposes the connection too when something resolved
        // it; a second Dispose does nothing.
        base.Dispose();
        _connected.TrySetCanceled();
        Interlocked.Exchange(ref _connection, null)?.Dispose();
        _connect.Dispose();
    }
}
