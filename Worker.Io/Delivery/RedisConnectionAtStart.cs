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
/// Redis tracing is off in this service (appsettings), so no instrumentation needs the connection.
/// </para>
/// <para>
/// Left to the library: when the Sentinels answer but the primary they name cannot be connected, StackExchange.Redis's
/// Sentinel connect throws without disposing its Sentinel multiplexer (SentinelPrimaryConnectAsync, 2.13 and 3.x), so
/// each such attempt leaves one behind; the growing retry interval keeps that to a few per minute of outage.
/// </para>
/// </remarks>
public sealed class RedisConnectionAtStart(
    IOptions<ConfigurationOptions> options, ILoggerFactory loggerFactory, ILogger<RedisConnectionAtStart> logger)
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

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var started = Stopwatch.GetTimestamp();
        var delay = FirstRetryDelay;
        for (var attempt = 1; ; attempt++)
        {
            var configuration = options.Value.Clone();
            configuration.LoggerFactory ??= loggerFactory;
            configuration.AbortOnConnectFail = true;
            try
            {
                // The Sentinel path of ConnectAsync still finishes synchronously (GetSentinelMasterConnection): it blocks
                // this one background thread, never a message's.
                var connection = await ConnectionMultiplexer.ConnectAsync(configuration).WaitAsync(stoppingToken);
                // The multiplexer keeps this object as its configuration: a later Configure() fails soft, as Aspire set it.
                configuration.AbortOnConnectFail = false;
                Volatile.Write(ref _connection, connection);
                _connected.TrySetResult();
                logger.LogInformation("Status store connected after {Attempts} attempt(s) in {Elapsed:F1} s; the I/O lane starts consuming",
                    attempt, Stopwatch.GetElapsedTime(started).TotalSeconds);
                return;
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                _connected.TrySetCanceled(stoppingToken);
                return;
            }
            catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
            {
                logger.LogWarning(ex, "Status store not reachable (attempt {Attempt}); the I/O lane consumes nothing until it is, next try in {Delay:F0} s",
                    attempt, delay.TotalSeconds);
            }

            try
            {
                await Task.Delay(delay, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                _connected.TrySetCanceled(stoppingToken);
                return;
            }

            delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, MaxRetryDelay.Ticks));
        }
    }
}
