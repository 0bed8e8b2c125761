using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// Moves due retries from the delayed set back into the stream (see <see cref="RetryScheduler"/>). It sleeps until the
/// next retry is due, wakes at once when this process schedules one, and otherwise looks every
/// <see cref="CpuLaneOptions.ClaimInterval"/> for retries scheduled by other processes (or left by dead ones), so an
/// idle worker makes no Redis calls in between.
/// </summary>
public sealed class DueRetryPromoter(RetryScheduler retries, IOptions<CpuLaneOptions> options, ILogger<DueRetryPromoter> logger) : BackgroundService
{
    private static readonly TimeSpan Shortest = TimeSpan.FromMilliseconds(20);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            while (!stoppingToken.IsCancellationRequested)
            {
                var wait = options.Value.ClaimInterval;
                try
                {
                    var (moved, nextDue) = await retries.PromoteDueAsync();
                    if (moved > 0)
                    {
                        logger.LogDebug("Moved {Count} due retries back into the stream", moved);
                    }

                    if (nextDue is { } due)
                    {
                        var untilDue = due - DateTimeOffset.UtcNow;
                        wait = untilDue < Shortest ? Shortest : untilDue < wait ? untilDue : wait;
                    }
                }
                catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
                {
                    logger.LogWarning(ex, "Promoting due retries failed; trying again in {Wait}", wait);
                }

                await retries.WaitForDueOrScheduledAsync(wait, stoppingToken);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }
}
