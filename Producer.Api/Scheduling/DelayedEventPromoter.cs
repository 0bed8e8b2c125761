using System.Text.Json;
using EventPipeline.Contracts;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.Scheduling;

/// <summary>
/// Moves delayed events into their lane once due (<see cref="DelayedEventStore"/>): never before their time, and any
/// number of API processes may run it at once without an event entering its lane twice (CPU lane: one script; I/O lane:
/// a lease, with at most a second copy of the same id after a crash between publish and removal). It sleeps until the
/// next event is due, wakes at once when this process holds one, and otherwise looks every
/// <see cref="SchedulingOptions.PollInterval"/> for events other processes held: a scheduled backlog costs one cheap
/// Redis call per lane and interval, and no worker holds or even sees an event before it is due.
/// </summary>
public sealed class DelayedEventPromoter(
    DelayedEventStore store,
    IoEventPublisher publisher,
    IOptions<SchedulingOptions> options,
    ILogger<DelayedEventPromoter> logger) : BackgroundService
{
    private static readonly TimeSpan Shortest = TimeSpan.FromMilliseconds(5);
    private IReadOnlyDictionary<string, long>? _counts;
    private DateTimeOffset _countedAt;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        SchedulingTelemetry.ObserveScheduled(() => _counts);
        // One loop per lane: a slow publisher confirm on the I/O lane must not hold back the CPU lane's due events.
        await Task.WhenAll(
            RunAsync(Lanes.Cpu, PromoteCpuAsync, stoppingToken),
            RunAsync(Lanes.Io, () => PromoteIoAsync(stoppingToken), stoppingToken));
    }

    private async Task RunAsync(string lane, Func<Task<DateTimeOffset?>> promote, CancellationToken stoppingToken)
    {
        try
        {
            while (!stoppingToken.IsCancellationRequested)
            {
                var wait = options.Value.PollInterval;
                try
                {
                    if (await promote() is { } due)
                    {
                        var untilDue = due - DateTimeOffset.UtcNow;
                        wait = untilDue < Shortest ? Shortest : untilDue < wait ? untilDue : wait;
                    }

                    if (lane == Lanes.Cpu)
                    {
                        await CountAsync();
                    }
                }
                catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
                {
                    logger.LogWarning(ex, "Promoting due delayed events of the {Lane} lane failed; trying again in {Wait}", lane, wait);
                }

                await store.WaitForDueOrHeldAsync(lane, wait, stoppingToken);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    private async Task<DateTimeOffset?> PromoteCpuAsync()
    {
        var (moved, next, expired) = await store.PromoteCpuAsync();
        foreach (var type in expired)
        {
            SchedulingTelemetry.NotRun(Lanes.Cpu, type, EventStates.Expired);
        }

        if (moved > 0 || expired.Count > 0)
        {
            logger.LogDebug("Moved {Moved} due events into the CPU lane ({Expired} expired while waiting)", moved, expired.Count);
        }

        // A full batch: more may be due right now.
        return moved + expired.Count >= options.Value.PromoteBatch ? DateTimeOffset.UtcNow : next;
    }

    private async Task<DateTimeOffset?> PromoteIoAsync(CancellationToken stoppingToken)
    {
        var (claimed, expired, next) = await store.ClaimIoAsync();
        foreach (var type in expired)
        {
            SchedulingTelemetry.NotRun(Lanes.Io, type, EventStates.Expired);
        }

        if (claimed.Count == 0)
        {
            return next;
        }

        // Enqueued now: the lane's latency metrics measure from here, the status keeps the original acceptedAt.
        var now = DateTimeOffset.UtcNow;
        var messages = claimed.Select(c => JsonSerializer.Deserialize<IoEventSubmitted>(c.Body)! with { AcceptedAt = now }).ToList();
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
            timeout.CancelAfter(options.Value.IoClaimLease / 2);
            await publisher.PublishAsync(messages, timeout.Token);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !stoppingToken.IsCancellationRequested)
        {
            // The lease runs out and a promoter (this one or another) publishes them again.
            logger.LogWarning(ex, "RabbitMQ did not confirm {Count} due I/O events; they are published again after the lease {Lease}",
                claimed.Count, options.Value.IoClaimLease);
            return DateTimeOffset.UtcNow + options.Value.PollInterval;
        }

        await store.FinishIoAsync(claimed);
        return claimed.Count >= options.Value.PromoteBatch ? DateTimeOffset.UtcNow : next;
    }

    private async Task CountAsync()
    {
        if (DateTimeOffset.UtcNow - _countedAt >= TimeSpan.FromSeconds(1))
        {
            _counts = await store.CountAsync();
            _countedAt = DateTimeOffset.UtcNow;
        }
    }
}
