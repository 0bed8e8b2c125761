using System.Diagnostics;
using EventPipeline.Contracts;
using EventPipeline.ServiceDefaults;
using EventPipeline.Shared;
using MassTransit;
using Microsoft.Extensions.Options;

namespace EventPipeline.Worker.Io.Delivery;

/// <summary>Thrown by <c>test.fail</c>: the failure a test asks for.</summary>
public sealed class RequestedTestFailureException() : Exception("test.fail: this event always fails");

public sealed class TestEventsOptions
{
    public bool Enabled { get; set; }
}

/// <summary>
/// Runs one I/O-lane event. MassTransit acknowledges the message when this returns; when it throws, the retry policy
/// runs it again (bounded, exponential) and after the last attempt moves it to <c>events-io_error</c>. The status
/// follows along: processing → succeeded, or retrying → dead. The intermediate states are best effort (a later write
/// replaces them); a final one is written before the message is acknowledged or moved (<see cref="FinalStatusWrite"/>):
/// a status store outage holds the message, it neither dead-letters the event, nor repeats a delivery that succeeded,
/// nor leaves an event <c>processing</c> forever once the broker has let go of it. The start check and the success go
/// through <see cref="StatusWriteCoalescer"/>, which sends those of concurrent deliveries together.
/// </summary>
public sealed class IoEventConsumer(
    DownstreamClient downstream,
    EventStatusStore statuses,
    StatusWriteCoalescer coalescedStatuses,
    PipelineMetrics metrics,
    IOptions<IoLaneOptions> options,
    IOptions<TestEventsOptions> testEvents,
    ILogger<IoEventConsumer> logger) : IConsumer<IoEventSubmitted>
{
    public async Task Consume(ConsumeContext<IoEventSubmitted> context)
    {
        var message = context.Message;
        var attempt = context.GetRetryAttempt() + 1;
        Activity.Current?.SetTag("eventpipeline.event.id", message.EventId);
        Activity.Current?.SetTag("eventpipeline.event.type", message.Type);
        Activity.Current?.SetTag("eventpipeline.attempt", attempt);

        // The start check: an event that already succeeded, was cancelled or expired is acknowledged without a call.
        if (await BestEffort(() => coalescedStatuses.TryStartAsync(message.EventId, attempt, context.MessageId?.ToString("N") ?? ""), StartDecision.Start, message.EventId) is not StartDecision.Start and var refused)
        {
            logger.LogInformation("Event {EventId} not started ({Decision}); acknowledging it without calling downstream", message.EventId, refused);
            if (refused is StartDecision.Cancelled or StartDecision.Expired)
            {
                SchedulingTelemetry.NotRun(Lanes.Io, message.Type, refused == StartDecision.Expired ? EventStates.Expired : EventStates.Cancelled);
            }

            return;
        }

        var started = Stopwatch.GetTimestamp();
        try
        {
            await RunAsync(message, context.CancellationToken);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !context.CancellationToken.IsCancellationRequested)
        {
            var final = ex is PermanentDownstreamException || attempt >= options.Value.MaxAttempts;
            var error = $"{ex.GetType().Name}: {ex.Message}";
            if (final)
            {
                logger.LogWarning(ex, "Event {EventId} failed attempt {Attempt} of {MaxAttempts}; moving it to {ErrorQueue}",
                    message.EventId, attempt, options.Value.MaxAttempts, IoLaneTopology.ErrorQueueName);
                await FinalStatusWrite.UntilWrittenAsync(() => statuses.MarkDeadAsync(message.EventId, attempt, error),
                    message.EventId, EventStates.Dead, logger, context.CancellationToken);
                metrics.Processed(Lanes.Io, message.Type, Outcomes.Dead, Stopwatch.GetElapsedTime(started));
                metrics.Finished(Lanes.Io, Outcomes.Dead, message.AcceptedAt);
            }
            else
            {
                logger.LogInformation("Event {EventId} failed attempt {Attempt} of {MaxAttempts} ({Error}); retrying",
                    message.EventId, attempt, options.Value.MaxAttempts, ex.Message);
                await BestEffort(() => statuses.MarkRetryingAsync(message.EventId, attempt, error), message.EventId);
                metrics.Processed(Lanes.Io, message.Type, Outcomes.Retried, Stopwatch.GetElapsedTime(started));
            }

            throw;
        }

        await FinalStatusWrite.UntilWrittenAsync(() => coalescedStatuses.MarkSucceededAsync(message.EventId, attempt, ""),
            message.EventId, EventStates.Succeeded, logger, context.CancellationToken);
        metrics.Processed(Lanes.Io, message.Type, Outcomes.Succeeded, Stopwatch.GetElapsedTime(started));
        metrics.Finished(Lanes.Io, Outcomes.Succeeded, message.AcceptedAt);
    }

    private Task BestEffort(Func<Task> write, string eventId) =>
        BestEffort(async () => { await write(); return true; }, true, eventId);

    private async Task<T> BestEffort<T>(Func<Task<T>> write, T fallback, string eventId)
    {
        try
        {
            return await write();
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
        {
            logger.LogWarning(ex, "Status of event {EventId} not written: the status store is unavailable", eventId);
            return fallback;
        }
    }

    private Task RunAsync(IoEventSubmitted message, CancellationToken cancellationToken)
    {
        switch (message.Type)
        {
            case EventTypes.WebhookPost:
                return downstream.DeliverAsync(message.EventId, message.Payload, message.Target, cancellationToken);
            case EventTypes.NoopIo:
                return Task.CompletedTask;
            case EventTypes.TestFail when testEvents.Value.Enabled:
                throw new RequestedTestFailureException();
            case EventTypes.TestCrash when testEvents.Value.Enabled:
                // Dies before the ack: RabbitMQ redelivers, and its delivery limit dead-letters a message that always does this.
                Environment.FailFast($"test.crash event {message.EventId}");
                return Task.CompletedTask;
            default:
                throw new PermanentDownstreamException($"The I/O lane has no handler for event type '{message.Type}'.");
        }
    }
}
