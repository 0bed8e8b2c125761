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
/// How it connects is <see cref="RedisConnectLoop"/>'s, shared with Worker.Io: attempts on a thread of their own, one
/// Sentinel connection kept across them, a Redis failure retried without end (1 s doubling to 15 s), anything else
/// logged once as critical naming the settings and the process stopped with exit code 1, attempts stopped at
/// <see cref="IHostApplicationLifetime.ApplicationStopping"/> and a connect that completes after that disposed, never
/// published.
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
    private readonly RedisConnectLoop _connect;
    private readonly IConfiguration _configuration;
    private readonly ILogger<SentinelConnectionAtStart> _logger;
    private readonly string _service;
    private ConnectionMultiplexer? _connection;

    public SentinelConnectionAtStart(
        IOptions<ConfigurationOptions> options, IHostApplicationLifetime lifetime, IConfiguration configuration,
        IHostEnvironment environment, ILoggerFactory loggerFactory, ILogger<SentinelConnectionAtStart> logger)
    {
        _connect = new RedisConnectLoop(options, lifetime, loggerFactory);
        _configuration = configuration;
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

    /// <summary>Whether a failed attempt may succeed later (<see cref="RedisConnectLoop.IsTransient"/>).</summary>
    public static bool IsTransient(Exception exception) => RedisConnectLoop.IsTransient(exception);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (!_configuration.GetValue("Aspire:StackExchange:Redis:DisableTracing", false))
        {
            _logger.LogWarning("Aspire:StackExchange:Redis:DisableTracing is false, but under Sentinel {Service} records no Redis command spans: Aspire attaches its instrumentation only to a connection it made itself", _service);
        }

        var connected = await _connect.ConnectAsync(
            (ex, attempt, delay) => _logger.LogWarning(ex, "Redis not reachable through Sentinel (attempt {Attempt}); what needs it fails as an outage until it is, next try in {Delay:F0} s",
                attempt, delay.TotalSeconds),
            ex => _logger.LogCritical(ex, "{Service} cannot connect to Redis with its settings (ConnectionStrings:redis, Aspire:StackExchange:Redis): {Reason}; it stops",
                _service, ex.Message),
            stoppingToken);
        if (connected is null)
        {
            return;
        }

        Volatile.Write(ref _connection, connected.Connection);
        _logger.LogInformation("Redis connected through Sentinel after {Attempts} attempt(s) in {Elapsed:F1} s",
            connected.Attempts, connected.Elapsed.TotalSeconds);
    }

    public override void Dispose()
    {
        base.Dispose();
        Interlocked.Exchange(ref _connection, null)?.Dispose();
        _connect.Dispose();
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
