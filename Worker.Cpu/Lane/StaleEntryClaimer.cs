using EventPipeline.Contracts;
using EventPipeline.ServiceDefaults;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// Crash recovery. Every <see cref="CpuLaneOptions.ClaimInterval"/> this consumer takes over entries that another
/// (dead) consumer left pending longer than <see cref="CpuLaneOptions.ClaimTimeout"/>, with XAUTOCLAIM. An entry
/// already delivered more than <see cref="CpuLaneOptions.MaxDeliveries"/> times is presumed to kill whoever runs
/// it and goes to the dead-letter stream without running again, so one poison event cannot stop the lane.
/// Also moves due retries back into the stream.
/// </summary>
public sealed class StaleEntryClaimer(
    LaneBuffer buffer,
    RetryScheduler retries,
    DeadLetterStream deadLetters,
    IConnectionMultiplexer redis,
    PipelineMetrics metrics,
    IOptions<CpuLaneOptions> options,
    ILogger<StaleEntryClaimer> logger) : BackgroundService
{
    private static readonly TimeSpan RetryPromotionInterval = TimeSpan.FromMilliseconds(250);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(RetryPromotionInterval);
        var nextClaim = DateTimeOffset.UtcNow;
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                try
                {
                    await retries.PromoteDueAsync();
                    if (DateTimeOffset.UtcNow >= nextClaim)
                    {
                        nextClaim = DateTimeOffset.UtcNow + options.Value.ClaimInterval;
                        await ClaimStaleAsync(stoppingToken);
                    }
                }
                catch (Exception ex) when (ex is RedisException or TimeoutException)
                {
                    logger.LogWarning(ex, "Lane maintenance failed; trying again shortly");
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    public async Task<int> ClaimStaleAsync(CancellationToken cancellationToken)
    {
        var db = redis.GetDatabase();
        await StreamEntryReader.EnsureGroupOnceAsync(db);
        var claimedTotal = 0;
        RedisValue start = "0-0";
        do
        {
            var free = buffer.FreeSlots;
            if (free == 0 || cancellationToken.IsCancellationRequested)
            {
                break; // busy: claim next round rather than hold entries we cannot start
            }

            var result = await db.StreamAutoClaimAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, buffer.ConsumerName,
                (long)options.Value.ClaimTimeout.TotalMilliseconds, start, free);
            var claimed = result.ClaimedEntries.Where(e => !e.IsNull).ToArray();
            if (claimed.Length > 0)
            {
                claimedTotal += claimed.Length;
                await DispatchClaimedAsync(db, claimed);
            }

            start = result.NextStartId;
        }
        while (start != "0-0");

        return claimedTotal;
    }

    private async Task DispatchClaimedAsync(IDatabase db, StreamEntry[] claimed)
    {
        var pending = await db.StreamPendingMessagesAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, claimed.Length,
            buffer.ConsumerName, claimed[0].Id, claimed[^1].Id);
        var deliveries = pending.ToDictionary(p => p.MessageId, p => p.DeliveryCount);

        foreach (var raw in claimed)
        {
            var entry = LaneEntry.Parse(raw);
            var count = deliveries.GetValueOrDefault(raw.Id, 1);
            if (count > options.Value.MaxDeliveries)
            {
                logger.LogError("Event {EventId} was delivered {Deliveries} times without finishing; dead-lettering it unrun", entry.Id, count);
                await deadLetters.DeadLetterAsync(entry, DeadLetterStream.ReasonDeliveryLimit, "DeliveryLimitExceeded",
                    $"Delivered {count} times without finishing: every consumer that ran it died.", null, entry.ErrorHistory);
                metrics.Processed(Lanes.Cpu, entry.Type, Outcomes.Dead, TimeSpan.Zero);
                metrics.Finished(Lanes.Cpu, Outcomes.Dead, entry.AcceptedAt);
                continue;
            }

            logger.LogWarning("Claimed stale event {EventId} (delivery {Deliveries}) from a consumer that stopped", entry.Id, count);
            await buffer.AddAsync(entry);
        }
    }
}
