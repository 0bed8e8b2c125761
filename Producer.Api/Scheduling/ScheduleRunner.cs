using System.Text.Json;
using EventPipeline.Producer.Ingest;
using EventPipeline.Producer.Validation;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.Scheduling;

/// <summary>
/// Fires due schedule ticks; runs in every API process, and any number of them may run at once (unlike Celery Beat, no
/// single-instance rule): a tick's event has a deterministic id and goes through idempotent ingest, and the schedule
/// moves past the tick only by compare-and-set (<see cref="ScheduleStore"/>). A tick is moved past only once its event
/// is held, so a broker outage or a crash delays a tick, never drops it. A tick older than
/// <see cref="SchedulingOptions.MisfireThreshold"/> found after no scheduler ran for that long (every API was down)
/// follows the schedule's misfire policy:
/// <c>fireOnce</c> fires it and continues from now, <c>skip</c> continues from now without firing.
/// </summary>
public sealed class ScheduleRunner(
    ScheduleStore schedules,
    EventIngest ingest,
    EventValidator validator,
    IOptions<SchedulingOptions> options,
    ILogger<ScheduleRunner> logger) : BackgroundService
{
    private static readonly TimeSpan Shortest = TimeSpan.FromMilliseconds(5);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            var wait = options.Value.PollInterval;
            try
            {
                var now = DateTimeOffset.UtcNow;
                // A tick is missed only when no scheduler ran for a while (an outage or a full restart); one that is
                // late while schedulers run (a tick in flight in a scheduler that died) is still fired, late.
                var outage = await schedules.MarkAliveAsync(now) is not { } alive || now - alive > options.Value.MisfireThreshold;
                foreach (var (name, tick) in await schedules.DueAsync(now))
                {
                    await FireAsync(name, tick, outage, stoppingToken);
                }

                if (await schedules.EarliestAsync() is { } earliest)
                {
                    var untilDue = earliest - DateTimeOffset.UtcNow;
                    wait = untilDue < Shortest ? Shortest : untilDue < wait ? untilDue : wait;
                }
            }
            catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
            {
                logger.LogWarning(ex, "Firing due schedules failed; trying again in {Wait}", wait);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }

            try
            {
                await Task.Delay(wait, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private async Task FireAsync(string name, DateTimeOffset tick, bool outage, CancellationToken cancellationToken)
    {
        var schedule = await schedules.GetAsync(name);
        if (schedule is null || schedule.Paused)
        {
            await schedules.DropAsync(name, tick);
            return;
        }

        var now = DateTimeOffset.UtcNow;
        var missed = outage && now - tick > options.Value.MisfireThreshold;
        var fire = !missed || schedule.Misfire == MisfirePolicies.FireOnce;
        var eventId = Schedule.EventIdOf(name, tick);
        if (fire)
        {
            var (submitted, invalid) = await SubmitAsync(schedule, eventId, cancellationToken);
            if (invalid)
            {
                fire = false;
            }
            else if (submitted is null)
            {
                return; // not held: the tick stays due and is fired again on the next pass
            }
            else if (submitted.Duplicate != true)
            {
                logger.LogInformation("Schedule {Schedule} fired its {Tick:O} tick as event {EventId}{Missed}", name, tick, eventId, missed ? " (missed: fired once)" : "");
            }
        }
        else
        {
            logger.LogWarning("Schedule {Schedule} missed its {Tick:O} tick; skipping the missed ticks as its misfire policy says", name, tick);
        }

        var next = schedule.NextAfter(missed ? now : tick);
        await schedules.AdvanceAsync(name, tick, fire, eventId, next);
    }

    private async Task<(SubmittedEvent? Submitted, bool Invalid)> SubmitAsync(Schedule schedule, string eventId, CancellationToken cancellationToken)
    {
        // The stored event was validated when the schedule was put; it is validated again, as the routing table may
        // have changed since. An event that no longer passes is logged and its tick passed over.
        var json = JsonSerializer.SerializeToElement(new Dictionary<string, JsonElement>(
            schedule.Event.EnumerateObject().Select(p => KeyValuePair.Create(p.Name, p.Value)))
        {
            ["id"] = JsonSerializer.SerializeToElement(eventId),
        });
        var errors = new Dictionary<string, string[]>();
        if (validator.Validate(json, "event", errors) is not { } validated)
        {
            logger.LogError("Schedule {Schedule}'s event is no longer valid; tick not fired: {Errors}", schedule.Name,
                string.Join("; ", errors.Select(e => $"{e.Key}: {string.Join(", ", e.Value)}")));
            return (null, true);
        }

        return (await ingest.SubmitTickAsync(validated, cancellationToken), false);
    }
}
