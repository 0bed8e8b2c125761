using System.Diagnostics;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Shared;

/// <summary>
/// The connect loop behind a service's Redis connection made in the background from the host's start:
/// <see cref="SentinelConnectionAtStart"/> (Producer.Api, Worker.Cpu, under Sentinel) and Worker.Io's
/// <c>RedisConnectionAtStart</c> (its consumers' gate). What each does with the connection (a proxy, a gate) and says in
/// its log is its own; how the connection is made is this.
/// </summary>
/// <remarks>
/// <para>
/// Attempts: each one runs with <c>AbortOnConnectFail=true</c>, so a failed one throws and disposes what it made instead
/// of returning a multiplexer that was never connected; once one succeeds the flag is set back to <c>false</c> on the
/// configuration objects the multiplexers keep, so a later reconnect fails soft, as Aspire set it. Between failed
/// attempts the wait doubles from 1 s to 15 s, so a long outage costs a try every 15 s.
/// </para>
/// <para>
/// Under Sentinel the Sentinel connection is made once and kept across attempts; each attempt asks it for the primary
/// (<c>GetSentinelMasterConnection</c>), which throws and disposes the primary's multiplexer while the primary cannot be
/// connected. StackExchange.Redis's own Sentinel connect does not dispose the Sentinel multiplexer it made when the
/// primary step throws (2.13 and 3.x), which left one open, with its sockets, subscriptions and reconnect handler, per
/// attempt — for ever with a wrong <c>serviceName</c>. The kept one is the connection's Sentinel afterwards (failover
/// follows it) and is disposed with this loop. A connection that reached replicas only (the primary the Sentinels name
/// down or unreachable, before a failover) counts as a failed attempt: a replica takes no write.
/// </para>
/// <para>
/// The Sentinel connect is synchronous inside StackExchange.Redis (up to <c>connectTimeout</c> per step), so every
/// attempt runs on a thread of its own: never on a thread-pool thread the service's requests need, and a stop never
/// waits for it.
/// </para>
/// <para>
/// Failures: a Redis failure, including the <see cref="AggregateException"/> of Redis failures that the Sentinel's primary
/// switch throws when a failover races the connect (it waits on its reconfiguration with <c>Task.Wait</c>), is retried
/// without end. Anything else cannot heal by retrying (a connection string without endpoints or with an unknown keyword,
/// a Sentinel setup without a service name): it is reported once, and the process stops with exit code 1; a background
/// service that throws would stop the host with exit code 0 (dotnet/runtime#67146), which a supervisor reads as a clean
/// stop.
/// </para>
/// <para>
/// Shutdown: the attempts stop at <see cref="IHostApplicationLifetime.ApplicationStopping"/>, which fires before any
/// hosted service stops. A connect that completes after that is disposed, never returned. One abandoned mid-way (the
/// client's connect cannot be cancelled) is disposed when it completes, with the Sentinel connection nothing will use
/// any more — not before: a Sentinel connection disposed while the attempt asks it for the primary makes the library
/// throw after connecting the primary, leaving that open.
/// </para>
/// </remarks>
public sealed class RedisConnectLoop(IOptions<ConfigurationOptions> options, IHostApplicationLifetime lifetime, ILoggerFactory loggerFactory)
    : IDisposable
{
    private static readonly TimeSpan FirstRetryDelay = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan MaxRetryDelay = TimeSpan.FromSeconds(15);

    /// <summary>The Sentinel connection, kept across attempts (only under Sentinel); touched by the one running attempt and Dispose.</summary>
    private ConnectionMultiplexer? _sentinel;

    /// <summary>An attempt given up at shutdown and still running: it disposes the Sentinel connection when it ends.</summary>
    private Task? _abandoned;

    /// <summary>
    /// Whether a failed attempt may succeed later: a Redis failure, or an <see cref="AggregateException"/> that wraps
    /// only Redis failures.
    /// </summary>
    public static bool IsTransient(Exception exception) =>
        RedisFailures.IsRedisFailure(exception)
        || exception is AggregateException aggregate
        && aggregate.Flatten().InnerExceptions is { Count: > 0 } inner
        && inner.All(RedisFailures.IsRedisFailure);

    /// <summary>
    /// Connects, trying again until it succeeds. Returns the connection, or <c>null</c> when the host began stopping
    /// first, or when the settings can never work: then <paramref name="cannotWork"/> has been told, the exit code is 1
    /// and the application is stopping.
    /// </summary>
    /// <param name="retrying">Told of each failed attempt that may succeed later: the failure, the attempt's number, the wait before the next.</param>
    /// <param name="cannotWork">Told once of a failure no retry can heal (log it as critical, naming the settings).</param>
    public async Task<RedisConnected?> ConnectAsync(Action<Exception, int, TimeSpan> retrying, Action<Exception> cannotWork, CancellationToken stoppingToken)
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
                connecting = Task.Factory.StartNew(() => ConnectOnce(configuration), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
                var connection = await connecting.WaitAsync(token);
                if (token.IsCancellationRequested)
                {
                    connection.Dispose();
                    return null;
                }

                // The multiplexer keeps this object as its configuration: a later reconnect fails soft, as Aspire set it.
                configuration.AbortOnConnectFail = false;
                return new RedisConnected(connection, attempt, Stopwatch.GetElapsedTime(started));
            }
            catch (OperationCanceledException) when (token.IsCancellationRequested)
            {
                Volatile.Write(ref _abandoned, connecting);
                connecting?.ContinueWith(static (made, self) =>
                {
                    if (made.IsCompletedSuccessfully)
                    {
                        made.Result.Dispose();
                    }

                    ((RedisConnectLoop)self!).DisposeSentinel();
                }, this, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                return null;
            }
            catch (Exception ex) when (IsTransient(ex))
            {
                retrying(ex, attempt, delay);
            }
            catch (Exception ex)
            {
                cannotWork(ex);
                Environment.ExitCode = 1;
                lifetime.StopApplication();
                return null;
            }

            try
            {
                await Task.Delay(delay, token);
            }
            catch (OperationCanceledException)
            {
                return null;
            }

            delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, MaxRetryDelay.Ticks));
        }
    }

    private ConnectionMultiplexer ConnectOnce(ConfigurationOptions configuration)
    {
        if (string.IsNullOrEmpty(configuration.ServiceName))
        {
            return ConnectionMultiplexer.Connect(configuration);
        }

        if (_sentinel is null)
        {
            var sentinelConfiguration = configuration.Clone();
            // Throws (disposing what it made) when no Sentinel answers; otherwise a Sentinel connection, which from
            // now on reconnects by itself.
            _sentinel = ConnectionMultiplexer.SentinelConnect(sentinelConfiguration);
            sentinelConfiguration.AbortOnConnectFail = false;
        }

        // Throws (disposing the primary's multiplexer it made) while the primary cannot be connected; the Sentinel stays.
        var connection = _sentinel.GetSentinelMasterConnection(configuration);
        // With replicas it connects to the primary and the replicas together, and returns when a replica answered while
        // the primary the Sentinels name did not (its role check reads a disconnected server as "not a replica"): every
        // write would then fail. Counted as a failed attempt, retried like the others, until a primary answers.
        var servers = connection.GetServers();
        if (!servers.Any(server => server.IsConnected && !server.IsReplica))
        {
            var replicas = string.Join(", ", servers.Where(server => server.IsConnected).Select(server => server.EndPoint));
            connection.Dispose();
            throw new RedisConnectionException(ConnectionFailureType.UnableToConnect,
                $"Sentinel: no primary of service {configuration.ServiceName} answers, only its replica(s) {replicas}");
        }

        return connection;
    }

    private void DisposeSentinel() => Interlocked.Exchange(ref _sentinel, null)?.Dispose();

    /// <summary>Disposes the kept Sentinel connection, unless an attempt abandoned at shutdown still uses it (that one disposes it when it ends).</summary>
    public void Dispose()
    {
        if (Volatile.Read(ref _abandoned) is not { IsCompleted: false })
        {
            DisposeSentinel();
        }
    }
}

/// <summary>A connection <see cref="RedisConnectLoop"/> made, after how many attempts and how long.</summary>
public sealed record RedisConnected(ConnectionMultiplexer Connection, int Attempts, TimeSpan Elapsed);
