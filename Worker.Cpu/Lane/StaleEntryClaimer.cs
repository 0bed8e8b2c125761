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
/// </summary>
public sealed class StaleEntryClaimer(
    LaneBuffer buffer,
    DeadLetterStream deadLetters,
    IConnectionMultiplexer redis,
    PipelineMetrics metrics,
    IOptions<CpuLaneOptions> options,
    ILogger<StaleEntryClaimer> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(options.Value.ClaimInterval);
        try
        {
            do
            {
                try
                {
                    await ClaimStaleAsync(stoppingToken);
                    await ForgetGoneConsumersAsync();
                }
                catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
                {
                    logger.LogWarning(ex, "Claiming stale entries failed; trying again in {Interval}", options.Value.ClaimInterval);
                }
            }
            while (await timer.WaitForNextTickAsync(stoppingToken));
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

    /// <summary>
    /// Every restarted process joins under a new name (host + pid), so the group would collect dead consumers forever.
    /// A consumer that holds nothing and has not read for many claim timeouts is gone; deleting one with no pending
    /// entries loses nothing (a live consumer that was merely slow is recreated by its next read).
    /// </summary>
    public async Task<int> ForgetGoneConsumersAsync()
    {
        var goneAfter = Math.Max(options.Value.ClaimTimeout.TotalMilliseconds * 10, TimeSpan.FromMinutes(5).TotalMilliseconds);
        return (int)await redis.GetDatabase().ScriptEvaluateAsync(ForgetGone, new
        {
            stream = CpuLaneStreams.Stream,
            group = CpuLaneStreams.Group,
            self = buffer.ConsumerName,
            idle = (long)goneAfter,
        });
    }

    // Checked and deleted in one script, so a consumer cannot read (and own entries) between the check and the delete.
    private static readonly LuaScript ForgetGone = LuaScript.Prepare("""
        local forgotten = 0
        for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', @stream, @group)) do
          local info = {}
          for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
          if info['pending'] == 0 and info['idle'] > tonumber(@idle) and info['name'] ~= @self then
            redis.call('XGROUP', 'DELCONSUMER', @stream, @group, info['name'])
            forgotten = forgotten + 1
          end
        end
        return forgotten
        """);

    private async Task DispatchClaimedAsync(IDatabase db, StreamEntry[] claimed)
    {
        // One XPENDING per entry (a range query could be cut short by this consumer's own entries in between), and the
        // started-run counts; all pipelined.
        var lookups = claimed.Select(e => db.StreamPendingMessagesAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, 1,
            buffer.ConsumerName, e.Id, e.Id)).ToArray();
        var starts = db.HashGetAsync(CpuLaneStreams.Started, [.. claimed.Select(e => e.Id)]);
        var deliveries = (await Task.WhenAll(lookups)).SelectMany(p => p).ToDictionary(p => p.MessageId, p => p.DeliveryCount);
        var started = await starts;

        for (var i = 0; i < claimed.Length; i++)
        {
            var raw = claimed[i];
            if (!deliveries.TryGetValue(raw.Id, out var count))
            {
                continue; // acknowledged by its previous owner in the meantime
            }

            // Every recorded start ended with its consumer dying (or frozen past the claim timeout: it will not record it).
            var unfinished = started[i].IsNull ? 0 : (long)started[i];
            var entry = LaneEntry.Parse(raw) with { UnfinishedRuns = unfinished };
            if (unfinished >= options.Value.MaxDeliveries)
            {
                logger.LogError("Event {EventId} was started {Runs} times and each time its consumer died; dead-lettering it unrun", entry.Id, unfinished);
                if (await deadLetters.DeadLetterAsync(entry, DeadLetterStream.ReasonDeliveryLimit, "DeliveryLimitExceeded",
                    $"Started {unfinished} times ({count} deliveries) and never finished: every consumer that ran it died.", null, entry.ErrorHistory))
                {
                    metrics.Processed(Lanes.Cpu, entry.Type, Outcomes.Dead, TimeSpan.Zero);
                    metrics.Finished(Lanes.Cpu, Outcomes.Dead, entry.AcceptedAt);
                }

                continue;
            }

            logger.LogWarning("Claimed stale event {EventId} (entry {EntryId}, delivery {Deliveries}, unfinished runs {Runs}) from a consumer that stopped",
                entry.Id, entry.EntryId, count, unfinished);
            await buffer.AddAsync(entry);
        }
    }
}
