using System.Diagnostics;
using System.Reflection;
using System.Runtime.ExceptionServices;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.Extensions;

/// <summary>
/// The API's Redis connection under Sentinel (<c>serviceName=</c> in <c>ConnectionStrings:redis</c>), made
/// asynchronously in the background from the host's start and tried again until it is up. Guarantee: the API starts
/// whether or not a Sentinel answers; until the connection is up every Redis call fails with a
/// <see cref="RedisConnectionException"/> (an outage: 503 with Retry-After, nothing held; readiness fails), and once it
/// is up the API serves without a restart.
/// </summary>
/// <remarks>
/// What it replaces: Aspire's client connects synchronously the first time the connection is resolved, which the API's
/// hosted services do at host start, and StackExchange.Redis's Sentinel connect throws when no Sentinel answered in
/// time ("The ConnectionMultiplexer is not a Sentinel connection. Detected as: Standalone", even with
/// <c>AbortOnConnectFail=false</c>): the host failed to start and the process exited — under the AppHost it stayed down
/// after the Sentinels came back. Without Sentinel Aspire's connection already starts disconnected and reconnects by
/// itself, so it is kept there. The same fix as Worker.Io's <c>RedisConnectionAtStart</c>; the API's services take
/// the connection in their constructors, so they get <see cref="Proxy"/>, which forwards to the connection once it is
/// up.
/// <para>
/// Each attempt is made with <c>AbortOnConnectFail=true</c>: a failed attempt throws and disposes what it made instead
/// of returning a multiplexer that was never connected. The options are the ones Aspire built from
/// <c>ConnectionStrings:redis</c>, the <c>Aspire:StackExchange:Redis</c> section and the API's own settings.
/// </para>
/// </remarks>
public sealed class SentinelConnectionAtStart : BackgroundService
{
    private static readonly TimeSpan FirstRetryDelay = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan MaxRetryDelay = TimeSpan.FromSeconds(15);

    private readonly IOptions<ConfigurationOptions> _options;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger<SentinelConnectionAtStart> _logger;
    private ConnectionMultiplexer? _connection;

    public SentinelConnectionAtStart(IOptions<ConfigurationOptions> options, ILoggerFactory loggerFactory, ILogger<SentinelConnectionAtStart> logger)
    {
        _options = options;
        _loggerFactory = loggerFactory;
        _logger = logger;
        var proxy = DispatchProxy.Create<IConnectionMultiplexer, ConnectionProxy>();
        ((ConnectionProxy)(object)proxy).Owner = this;
        Proxy = proxy;
    }

    /// <summary>What the API's services get as their <see cref="IConnectionMultiplexer"/>.</summary>
    public IConnectionMultiplexer Proxy { get; }

    /// <summary>The connection; throws a <see cref="RedisConnectionException"/> (a Redis outage) until it is up.</summary>
    public IConnectionMultiplexer Connection => Volatile.Read(ref _connection)
        ?? throw new RedisConnectionException(ConnectionFailureType.UnableToConnect, "Redis is not connected yet: the API is still connecting to it through Sentinel");

    internal bool IsConnected => Volatile.Read(ref _connection) is { IsConnected: true };

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var started = Stopwatch.GetTimestamp();
        var delay = FirstRetryDelay;
        for (var attempt = 1; ; attempt++)
        {
            var configuration = _options.Value.Clone();
            configuration.LoggerFactory ??= _loggerFactory;
            configuration.AbortOnConnectFail = true;
            try
            {
                // The Sentinel path of ConnectAsync finishes synchronously (GetSentinelMasterConnection): it blocks this
                // one background thread, never a request's.
                var connection = await Task.Run(() => ConnectionMultiplexer.ConnectAsync(configuration), stoppingToken).WaitAsync(stoppingToken);
                // The multiplexer keeps this object as its configuration: a later reconnect fails soft, as Aspire set it.
                configuration.AbortOnConnectFail = false;
                Volatile.Write(ref _connection, connection);
                _logger.LogInformation("Redis connected through Sentinel after {Attempts} attempt(s) in {Elapsed:F1} s",
                    attempt, Stopwatch.GetElapsedTime(started).TotalSeconds);
                return;
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
            {
                _logger.LogWarning(ex, "Redis not reachable through Sentinel (attempt {Attempt}); requests that need it are answered 503, next try in {Delay:F0} s",
                    attempt, delay.TotalSeconds);
            }

            try
            {
                await Task.Delay(delay, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, MaxRetryDelay.Ticks));
        }
    }

    public override void Dispose()
    {
        base.Dispose();
        Volatile.Read(ref _connection)?.Dispose();
    }

    /// <summary>
    /// Forwards every call to the connection once it is up; before that, <c>IsConnected</c> is false and every other call
    /// throws the connection's <see cref="RedisConnectionException"/>. Disposing it is the owner's job.
    /// </summary>
    public class ConnectionProxy : DispatchProxy
    {
        internal SentinelConnectionAtStart Owner { get; set; } = null!;

        protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
        {
            ArgumentNullException.ThrowIfNull(targetMethod);
            switch (targetMethod.Name)
            {
                case nameof(IDisposable.Dispose):
                    return null;
                case nameof(IAsyncDisposable.DisposeAsync):
                    return ValueTask.CompletedTask;
                case "get_" + nameof(IConnectionMultiplexer.IsConnected):
                    return Owner.IsConnected;
                case nameof(IConnectionMultiplexer.GetDatabase) when args is [int db, var asyncState]:
                    // Every Redis call of the API's stores starts here: no reflection on that path.
                    return Owner.Connection.GetDatabase(db, asyncState);
            }

            try
            {
                return targetMethod.Invoke(Owner.Connection, args);
            }
            catch (TargetInvocationException ex) when (ex.InnerException is not null)
            {
                ExceptionDispatchInfo.Capture(ex.InnerException).Throw();
                throw;
            }
        }
    }
}
