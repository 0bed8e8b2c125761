using System.Diagnostics;
using System.Reflection;
using System.Runtime.ExceptionServices;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Shared;

/// <summary>
/// A service's shared Redis connection under Sentinel (<c>serviceName=</c>), made in the background from the host's
/// start and tried again until it is up. Guarantee: the service starts whether or not a Sentinel answers; until the
/// connection is up every Redis call through <see cref="Proxy"/> fails with a <see cref="RedisConnectionException"/> (an
/// outage: the API answers 503 with Retry-After and holds nothing, a worker's loops back off and take nothing; readiness
/// fails), and once it is up the service works without a restart. Used by Producer.Api and Worker.Cpu
/// (<see cref="SentinelConnectionAtStartExtensions.AddSentinelConnectionAtStart"/>); Worker.Io has its own variant
/// (<c>RedisConnectionAtStart</c>) that gates its consumers instead of handing out a proxy.
/// </summary>
/// <remarks>
/// What it replaces: Aspire's client connects synchronously the first time the connection is resolved, which hosted
/// services do at host start, and StackExchange.Redis's Sentinel connect throws when no Sentinel answered in time
/// ("The ConnectionMultiplexer is not a Sentinel connection. Detected as: Standalone", even with
/// <c>AbortOnConnectFail=false</c>): the host failed to start and the process exited — under the AppHost it stayed down
/// after the Sentinels came back. Without Sentinel Aspire's connection already starts disconnected and reconnects by
/// itself, so it is kept there.
/// <para>
/// Attempts: the Sentinel connection is made once (with <c>AbortOnConnectFail=true</c>: it throws and disposes its own
/// multiplexer when no Sentinel answers) and kept across attempts; each attempt asks it for the primary
/// (<c>GetSentinelMasterConnection</c>), which throws and disposes the primary's multiplexer while the primary cannot be
/// connected. StackExchange.Redis's own Sentinel connect does not dispose the Sentinel multiplexer when the primary step
/// throws (2.13 and 3.x), which left one open, with its sockets, subscriptions and reconnect handler, per attempt — for
/// ever with a wrong <c>serviceName</c>. The kept one is the connection's Sentinel afterwards (failover follows it).
/// The whole connect is synchronous inside StackExchange.Redis on the Sentinel path (up to <c>connectTimeout</c> per
/// step), so it runs on a thread of its own, never on a thread-pool thread the service's requests need.
/// </para>
/// <para>
/// Failures: a Redis failure, including the <see cref="AggregateException"/> of Redis failures that the primary switch
/// throws (it waits on its reconfiguration with <c>Task.Wait</c>), is retried without end, doubling from 1 to 15 s.
/// Anything else cannot heal by retrying: it is logged once as critical, naming the settings, and the process stops with
/// exit code 1 (a background service that throws would stop the host with exit code 0, dotnet/runtime#67146).
/// Shutdown: attempts stop at <see cref="IHostApplicationLifetime.ApplicationStopping"/>; a connect that completes
/// after that (it cannot be cancelled) is disposed, never published.
/// </para>
/// <para>
/// Contract of the proxy: before the connection is up, every member but <c>IsConnected</c> and <c>Dispose</c> throws —
/// including subscribing to an event, <c>RegisterProfiler</c> and <c>ToString</c>. A constructor that calls one of them
/// (OpenTelemetry's <c>AddRedisInstrumentation()</c> without a connection does) would stop the host at start again.
/// For that reason Aspire's Redis command tracing (<c>Aspire:StackExchange:Redis:DisableTracing=false</c>) records
/// nothing under Sentinel: Aspire attaches it only to a connection it made itself; a warning says so at start.
/// </para>
/// </remarks>
public sealed class SentinelConnectionAtStart : BackgroundService
{
    private static readonly TimeSpan FirstRetryDelay = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan MaxRetryDelay = TimeSpan.FromSeconds(15);

    private readonly IOptions<ConfigurationOptions> _options;
    private readonly IHostApplicationLifetime _lifetime;
    private readonly IConfiguration _configuration;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger<SentinelConnectionAtStart> _logger;
    private readonly string _service;
    private ConnectionMultiplexer? _connection;

    /// <summary>The Sentinel connection, kept across attempts; touched only by the one connect thread and Dispose.</summary>
    private ConnectionMultiplexer? _sentinel;

    public SentinelConnectionAtStart(
        IOptions<ConfigurationOptions> options, IHostApplicationLifetime lifetime, IConfiguration configuration,
        IHostEnvironment environment, ILoggerFactory loggerFactory, ILogger<SentinelConnectionAtStart> logger)
    {
        _options = options;
        _lifetime = lifetime;
        _configuration = configuration;
        _loggerFactory = loggerFactory;
        _logger = logger;
        _service = environment.ApplicationName;
        var proxy = DispatchProxy.Create<IConnectionMultiplexer, ConnectionProxy>();
        ((ConnectionProxy)(object)proxy).Owner = this;
        Proxy = proxy;
    }

    /// <summary>What the service's classes get as their <see cref="IConnectionMultiplexer"/>.</summary>
    public IConnectionMultiplexer Proxy { get; }

    /// <summary>The connection; throws a <see cref="RedisConnectionException"/> (a Redis outage) until it is up.</summary>
    public IConnectionMultiplexer Connection => Volatile.Read(ref _connection)
        ?? throw new RedisConnectionException(ConnectionFailureType.UnableToConnect, $"Redis is not connected yet: {_service} is still connecting to it through Sentinel");

    internal bool IsConnected => Volatile.Read(ref _connection) is { IsConnected: true };

    /// <summary>
    /// Whether a failed attempt may succeed later: a Redis failure, or an <see cref="AggregateException"/> that wraps
    /// only Redis failures.
    /// </summary>
    public static bool IsTransient(Exception exception) =>
        RedisFailures.IsRedisFailure(exception)
        || exception is AggregateException aggregate
        && aggregate.Flatten().InnerExceptions is { Count: > 0 } inner
        && inner.All(RedisFailures.IsRedisFailure);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (!_configuration.GetValue("Aspire:StackExchange:Redis:DisableTracing", false))
        {
            _logger.LogWarning("Aspire:StackExchange:Redis:DisableTracing is false, but under Sentinel {Service} records no Redis command spans: Aspire attaches its instrumentation only to a connection it made itself", _service);
        }

        using var stopping = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken, _lifetime.ApplicationStopping);
        var token = stopping.Token;
        var started = Stopwatch.GetTimestamp();
        var delay = FirstRetryDelay;
        for (var attempt = 1; ; attempt++)
        {
            Task<ConnectionMultiplexer>? connecting = null;
            try
            {
                var configuration = _options.Value.Clone();
                configuration.LoggerFactory ??= _loggerFactory;
                configuration.AbortOnConnectFail = true;
                connecting = Task.Factory.StartNew(() => ConnectOnce(configuration), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
                var connection = await connecting.WaitAsync(token);
                if (token.IsCancellationRequested)
                {
                    connection.Dispose();
                    return;
                }

                // The multiplexer keeps this object as its configuration: a later reconnect fails soft, as Aspire set it.
                configuration.AbortOnConnectFail = false;
                Volatile.Write(ref _connection, connection);
                _logger.LogInformation("Redis connected through Sentinel after {Attempts} attempt(s) in {Elapsed:F1} s",
                    attempt, Stopwatch.GetElapsedTime(started).TotalSeconds);
                return;
            }
            catch (OperationCanceledException) when (token.IsCancellationRequested)
            {
                // The client's connect cannot be cancelled: what it still makes is disposed when it is made.
                _ = connecting?.ContinueWith(static made => made.Result.Dispose(), CancellationToken.None,
                    TaskContinuationOptions.OnlyOnRanToCompletion, TaskScheduler.Default);
                return;
            }
            catch (Exception ex) when (IsTransient(ex))
            {
                _logger.LogWarning(ex, "Redis not reachable through Sentinel (attempt {Attempt}); what needs it fails as an outage until it is, next try in {Delay:F0} s",
                    attempt, delay.TotalSeconds);
            }
            catch (Exception ex)
            {
                _logger.LogCritical(ex, "{Service} cannot connect to Redis with its settings (ConnectionStrings:redis, Aspire:StackExchange:Redis): {Reason}; it stops",
                    _service, ex.Message);
                Environment.ExitCode = 1;
                _lifetime.StopApplication();
                return;
            }

            try
            {
                await Task.Delay(delay, token);
            }
            catch (OperationCanceledException)
            {
                return;
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
        return _sentinel.GetSentinelMasterConnection(configuration);
    }

    public override void Dispose()
    {
        base.Dispose();
        Interlocked.Exchange(ref _connection, null)?.Dispose();
        Interlocked.Exchange(ref _sentinel, null)?.Dispose();
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
                    // Every Redis call of the services' stores starts here: no reflection on that path.
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

public static class SentinelConnectionAtStartExtensions
{
    /// <summary>
    /// Under Sentinel, hands the services <see cref="SentinelConnectionAtStart.Proxy"/> as their
    /// <see cref="IConnectionMultiplexer"/> instead of Aspire's synchronously connected one. Call after
    /// <c>AddRedisClient("redis")</c>. Returns whether Sentinel is in use.
    /// </summary>
    public static bool AddSentinelConnectionAtStart(this IHostApplicationBuilder builder)
    {
        if (!IsSentinel(builder.Configuration))
        {
            return false;
        }

        builder.Services.AddSingleton<SentinelConnectionAtStart>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<SentinelConnectionAtStart>());
        builder.Services.Replace(ServiceDescriptor.Singleton(sp => sp.GetRequiredService<SentinelConnectionAtStart>().Proxy));
        return true;
    }

    /// <summary>
    /// Whether the Redis connection goes through Sentinel, read from where Aspire reads it: <c>ConnectionStrings:redis</c>,
    /// else <c>Aspire:StackExchange:Redis:ConnectionString</c>, or a service name in its <c>ConfigurationOptions</c>
    /// section. No string, or one that does not parse, is not Sentinel: Aspire reports it.
    /// </summary>
    public static bool IsSentinel(IConfiguration configuration)
    {
        if (!string.IsNullOrWhiteSpace(configuration["Aspire:StackExchange:Redis:ConfigurationOptions:ServiceName"]))
        {
            return true;
        }

        var connectionString = configuration.GetConnectionString("redis") ?? configuration["Aspire:StackExchange:Redis:ConnectionString"];
        if (string.IsNullOrWhiteSpace(connectionString))
        {
            return false;
        }

        try
        {
            return !string.IsNullOrEmpty(ConfigurationOptions.Parse(connectionString, ignoreUnknown: true).ServiceName);
        }
        catch (ArgumentException)
        {
            return false;
        }
    }
}
