using EventPipeline.Shared;
using StackExchange.Redis;

namespace EventPipeline.Worker.Io.Delivery;

/// <summary>
/// Connects the status store's Redis client while the host starts, before the bus does. Aspire's client connects
/// synchronously the first time it is resolved; left to the first message, that happened with the prefetched messages
/// of a burst arriving at once, each handler's thread blocked on the same connect, and the connect's own completions
/// starved of threads: under the Sentinel topology a replica started on a busy machine timed out connecting, kept timing
/// out, and delivered nothing for minutes (CI, ClusterTopologyTests, session 7: "Sentinel: The ConnectionMultiplexer is
/// not a Sentinel connection"). Here the connect runs alone. If it fails, the first message tries again, as before.
/// </summary>
public sealed class RedisConnectionAtStart(IServiceProvider services, ILogger<RedisConnectionAtStart> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        try
        {
            var redis = services.GetRequiredService<IConnectionMultiplexer>();
            logger.LogInformation("Status store connected at start: {Connected}", redis.IsConnected);
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
        {
            logger.LogWarning(ex, "Status store not reachable at start; the first message connects again");
        }

        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
