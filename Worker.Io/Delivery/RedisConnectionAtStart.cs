using System.Diagnostics;
using EventPipeline.Shared;
using MassTransit.Transports;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Io.Delivery;

/// <summary>
/// The status store's Redis connection, made asynchronously in the background from the host's start and tried again
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
/// Each attempt is made with <c>AbortOnConnectFail=true</c>: a failed attempt then throws and disposes what it made
/// instead of returning a multiplexer that was never connected. (Aspire's <c>false</c> cannot keep retrying a Sentinel
/// connect in the background anyway: the discovery step throws at once.) The options are the ones Aspire built from
/// <c>ConnectionStrings:redis</c> and the <c>Aspire:StackExchange:Redis</c> section, so nothing else changes; Aspire's
/// Redis tracing is forced off in this service (IoLaneExtensions), so no instrumentation needs the connection.
/// </para>
/// <para>
/// Under Sentinel the Sentinel connection is made once and kept across attempts, and each attempt asks it for the
/// primary (<c>GetSentinelMasterConnection</c>): StackExchange.Redis's own Sentinel connect throws without disposing the
/// Sentinel multiplexer it made when the primary cannot be connected (2.13 and 3.x), which left one open, with its
/// sockets, subscriptions and reconnect handler, for every attempt of an outage of the data nodes. The kept one is the
/// connection's Sentinel afterwards (failover follows it) and is disposed with this service.
/// </para>
/// <para>
/// Shutdown: the attempts stop at <see cref="IHostApplicationLifetime.ApplicationStopping"/>, which fires before any
/// hosted service stops. MassTransit's hosted service stops before this one and cannot stop a bus whose start (its
/// endpoints waiting here) has not returned, so a connect that completed after that signal would let the endpoints
/// consume while the process exits; such a connection is disposed instead, and <see cref="Ready"/> is cancelled.
/// A connect abandoned mid-way (the client's connect cannot be cancelled) is disposed when it completes.
/// </para>
/// <para>
/// Failures: a Redis failure (including the <see cref="AggregateException"/> of Redis failures that the Sentinel's
/// primary switch throws when a failover races the connect) is retried without end. Anything else cannot heal by
/// retrying (a connection string without endpoints or with an unknown keyword, a Sentinel setup without a service
/// name): it is logged once as critical, naming the setting, and the process stops with exit code 1; a background
/// service that throws would stop the host with exit code 0 (dotnet/runtime#67146), which a supervisor reads as a
/// clean stop.
/// </para>
/// </remarks>
public sealed class RedisConnectionAtStart(
    IOptions<ConfigurationOptions> options, IHostApplicationLifetime lifetime, ILoggerFactory loggerFactory, ILogger<RedisConnectionAtStart> logger)
    : BackgroundService, IReceiveEndpointDependency
{
    /// <summary>Between failed attempts: doubling from the first to the last, so a long outage costs a try every 15 s.</summary>
    private static readonly TimeSpan FirstRetryDelay = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan MaxRetryDelay = TimeSpan.FromSeconds(15);

    private readonly TaskCompletionSource _connected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private ConnectionMultiplexer? _connection;

    /// <summary>Completes when the connection is up: MassTransit starts consuming on the endpoints that depend on it then.</summary>
    public Task Ready => _connected.Task;

    /// <summary>The connection; throws a <see cref="RedisConnectionException"/> (a Redis failure) until it is up.</summary>
    public IConnectionMultiplexer Connection => Volatile.Read(ref _connection)
        ?? throw new RedisConnectionException(ConnectionFailureType.UnableToConnect, "The status store is not connected yet: Worker.Io is still connecting to it");

    /// <summary>The Sentinel connection, kept across attempts (only under Sentinel); touched by the one connect loop.</summary>
    private ConnectionMultiplexer? _sentinel;
    private ConfigurationOptions? _sentinelConfiguration;

    /// <summary>An attempt given up at shutdown and still running: it disposes the Sentinel connection when it ends.</summary>
    private Task? _abandoned;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var stopping = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken, lifetime.ApplicationStopping);
        var token = stopping.Token;
        var started = Stopwatch.GetTimestamp();
        var delay = FirstRetryDelay;
        for (var attempt = 1; ; attempt++)
        {
            Task<ConnectionMultiplexer>? connecting = null;
            try
            {
                var configuration = options.Value.Clone();
                configuration.LoggerFactory ??= loggerFactory;
                configuration.AbortOnConnectFail = true;
                // On the thread pool: the Sentinel part of a connect is synchronous, and a stop must not wait for it.
                connecting = Task.Run(() => ConnectOnceAsync(configuration), CancellationToken.None);
                var connection = await connecting.WaitAsync(token);
                if (token.IsCancellationRequested)
                {
                    connection.Dispose();
                    _connected.TrySetCanceled(token);
                    return;
                }

                // The multiplexers keep these objects as their configuration: a later Configure() fails soft, as Aspire set it.
                configuration.AbortOnConnectFail = false;
                _sentinelConfiguration?.AbortOnConnectFail = false;
                Volatile.Write(ref _connection, connection);
                _connected.TrySetResult();
                logger.LogInformation("Status store connected after {Attempts} attempt(s) in {Elapsed:F1} s; the I/O lane starts consuming",
                    attempt, Stopwatch.GetElapsedTime(started).TotalSeconds);
                return;
            }
            catch (OperationCanceledException) when (token.IsCancellationRequested)
            {
                // The client's connect cannot be cancelled: what it still makes is disposed when it is made, with the
                // Sentinel connection nothing will use any more. Not before: a Sentinel connection disposed while the
                // attempt asks it for the primary makes the library throw after connecting the primary, leaving that open.
                Volatile.Write(ref _abandoned, connecting);
                connecting?.ContinueWith(static (made, self) =>
                {
                    if (made.IsCompletedSuccessfully)
                    {
                        made.Result.Dispose();
                    }

                    ((RedisConnectionAtStart)self!).DisposeSentinel();
                }, this, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                _connected.TrySetCanceled(token);
                return;
            }
            catch (Exception ex) when (IsTransient(ex))
            {
                logger.LogWarning(ex, "Status store not reachable (attempt {Attempt}); the I/O lane consumes nothing until it is, next try in {Delay:F0} s",
                    attempt, delay.TotalSeconds);
            }
            catch (Exception ex)
            {
                logger.LogCritical(ex, "The status store cannot be connected with its settings (ConnectionStrings:redis, Aspire:StackExchange:Redis): {Reason}; Worker.Io stops",
                    ex.Message);
                _connected.TrySetCanceled(CancellationToken.None);
                Environment.ExitCode = 1;
                lifetime.StopApplication();
                return;
            }

            try
            {
                await Task.Delay(delay, token);
            }
            catch (OperationCanceledException)
            {
                _connected.TrySetCanceled(token);
                return;
            }

            delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, MaxRetryDelay.Ticks));
        }
    }

    /// <summary>
    /// Whether a failed attempt may succeed later: a Redis failure, or the <see cref="AggregateException"/> that wraps
    /// only Redis failures (the Sentinel's primary switch waits on its reconfiguration with <c>Task.Wait</c>).
    /// </summary>
    public static bool IsTransient(Exception exception) =>
        RedisFailures.IsRedisFailure(exception)
        || exception is AggregateException aggregate
        && aggregate.Flatten().InnerExceptions is { Count: > 0 } inner
        && inner.All(RedisFailures.IsRedisFailure);

    private async Task<ConnectionMultiplexer> ConnectOnceAsync(ConfigurationOptions configuration)
    {
        if (string.IsNullOrEmpty(configuration.ServiceName))
        {
            return await ConnectionMultiplexer.ConnectAsync(configuration);
        }

        if (_sentinel is null)
        {
            // With AbortOnConnectFail it either throws (and disposes what it made) or is a Sentinel connection.
            var sentinelConfiguration = configuration.Clone();
            _sentinel = await ConnectionMultiplexer.SentinelConnectAsync(sentinelConfiguration);
            _sentinelConfiguration = sentinelConfiguration;
        }

        // Throws (disposing the primary's multiplexer it made) while the primary cannot be connected; the Sentinel stays.
        // Not covered (docs/io-lane.md, open): with replicas, the library counts the connect as made when only a replica
        // answers, so the gate can open before a primary does.
        return _sentinel.GetSentinelMasterConnection(configuration);
    }

    private void DisposeSentinel() => Interlocked.Exchange(ref _sentinel, null)?.Dispose();

    public override void Dispose()
    {
        // The container disposes the connection too when something resolved it; a second Dispose does nothing.
        Interlocked.Exchange(ref _connection, null)?.Dispose();
        if (Volatile.Read(ref _abandoned) is not { IsCompleted: false })
        {
            DisposeSentinel();
        }

        base.Dispose();
    }
}
