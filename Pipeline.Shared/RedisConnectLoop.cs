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
/// down or unreachable, before a failover) counts as a failed attempt: a replica takes no write. It is tried again
/// after the first delay (1 s) each time, not the grown backoff: what it waits for (a promotion, or the primary back)
/// comes by itself, and the service should follow it at once.
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
/// hosted service stops. A connect that completes after that, or after this loop was disposed, is disposed, never
/// returned; an attempt about to begin when the loop is disposed does not begin. One abandoned mid-way (the
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

    /// <summary>The attempt running now or last (its thread may outlive a stop: the client's connect cannot be cancelled).</summary>
    private Task? _attempt;

    private int _disposed;

    /// <summary>Runs right after an attempt's look at whether the loop was disposed (tests put a Dispose there); null in production.</summary>
    internal Action? AfterDisposedCheck;

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
            if (Volatile.Read(ref _disposed) != 0)
            {
                return null;
            }

            AfterDisposedCheck?.Invoke();
            Task<ConnectionMultiplexer>? connecting = null;
            var replicasOnly = false;
            try
            {
                var configuration = options.Value.Clone();
                configuration.LoggerFactory ??= loggerFactory;
                configuration.AbortOnConnectFail = true;
                connecting = new Task<ConnectionMultiplexer>(() => ConnectOnce(configuration), CancellationToken.None, TaskCreationOptions.LongRunning);
                // Published before a second look at _disposed, as Dispose sets _disposed before it looks at the attempt
                // (both full fences): a Dispose that came after the look above either sees this attempt (and disposes the
                // Sentinel when it ends) or is seen here, and the attempt never starts. Before, one in between saw no
                // attempt, and the attempt then made a Sentinel connection and a connection that outlived the loop.
                _ = Interlocked.Exchange(ref _attempt, connecting);
                if (Volatile.Read(ref _disposed) != 0)
                {
                    DisposeSentinel();
                    return null;
                }

                connecting.Start(TaskScheduler.Default);
                var connection = await connecting.WaitAsync(token);
                if (token.IsCancellationRequested || Volatile.Read(ref _disposed) != 0)
                {
                    // Disposed while it connected (a host disposed without a stop): the connection is nobody's.
                    connection.Dispose();
                    return null;
                }

                // The multiplexer keeps this object as its configuration: a later reconnect fails soft, as Aspire set it.
                configuration.AbortOnConnectFail = false;
                return new RedisConnected(connection, attempt, Stopwatch.GetElapsedTime(started));
            }
            catch (OperationCanceledException) when (token.IsCancellationRequested)
            {
                // The abandoned attempt's connection, if it makes one, is disposed; its Sentinel connection by Dispose.
                connecting?.ContinueWith(static made =>
                {
                    if (made.IsCompletedSuccessfully)
                    {
                        made.Result.Dispose();
                    }
                }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                return null;
            }
            catch (ReplicasOnlyException ex)
            {
                // The Sentinels answer and a replica does: a failover (or the primary's return) is what is awaited, so
                // the next attempt is made after the first delay, not after a backoff grown while nothing answered.
                replicasOnly = true;
                retrying(ex.Failure, attempt, FirstRetryDelay);
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
                await Task.Delay(replicasOnly ? FirstRetryDelay : delay, token);
            }
            catch (OperationCanceledException)
            {
                return null;
            }

            delay = replicasOnly ? FirstRetryDelay : TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, MaxRetryDelay.Ticks));
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
            throw new ReplicasOnlyException(new RedisConnectionException(ConnectionFailureType.UnableToConnect,
                $"Sentinel: no primary of service {configuration.ServiceName} answers, only its replica(s) {(replicas.Length > 0 ? replicas : "(none connected any more)")}"));
        }

        return connection;
    }

    private void DisposeSentinel() => Interlocked.Exchange(ref _sentinel, null)?.Dispose();

    /// <summary>
    /// Disposes the kept Sentinel connection; while an attempt still runs (abandoned at a stop, or running when the host
    /// is disposed without a stop), when that attempt ends: disposed under it, the library throws after connecting the
    /// primary and leaves that connection open. In any order with the cancellation of <see cref="ConnectAsync"/>.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        if (Volatile.Read(ref _attempt) is { IsCompleted: false } running)
        {
            running.ContinueWith(static (_, self) => ((RedisConnectLoop)self!).DisposeSentinel(), this,
                CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
        else
        {
            DisposeSentinel();
        }
    }

    /// <summary>A connect that reached replicas only; <see cref="Failure"/> is what is reported.</summary>
    private sealed class ReplicasOnlyException(RedisConnectionException failure) : Exception(failure.Message, failure)
    {
        public RedisConnectionException Failure { get; } = failure;
    }
}

/// <summary>A connection <see cref="RedisConnectLoop"/> made, after how many attempts and how long.</summary>
public sealed record RedisConnected(ConnectionMultiplexer Connection, int Attempts, TimeSpan Elapsed);
