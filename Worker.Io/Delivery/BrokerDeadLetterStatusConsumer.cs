using EventPipeline.Contracts;
using EventPipeline.ServiceDefaults;
using EventPipeline.Shared;
using MassTransit;

namespace EventPipeline.Worker.Io.Delivery;

/// <summary>
/// Marks an event <c>dead</c> when RabbitMQ itself dead-lettered it: a message whose consumer died before acking it
/// more than <see cref="IoLaneTopology.DeliveryLimit"/> times never reaches <see cref="IoEventConsumer"/>'s error path,
/// so nobody else would write its final status. Reads a copy of everything that enters the error exchange, from a
/// queue of its own (the error queue itself stays untouched for operators), and ignores MassTransit's own error moves,
/// whose status the consumer already wrote. It never gives up on a status write: while Redis is out it keeps the message
/// unacknowledged and tries again with a capped backoff (at most the endpoint's prefetch count of messages wait this
/// way, so an outage costs a few attempts a second, not a hot loop), so the status ends <c>dead</c> once Redis answers
/// and nothing piles up in this queue's own error queue. On shutdown the message goes back to the queue.
/// </summary>
public sealed class BrokerDeadLetterStatusConsumer(
    EventStatusStore statuses,
    PipelineMetrics metrics,
    ILogger<BrokerDeadLetterStatusConsumer> logger) : IConsumer<IoEventSubmitted>
{
    /// <summary>The queue this consumer reads: bound to the error exchange, nothing else publishes to it.</summary>
    public const string QueueName = IoLaneTopology.ErrorQueueName + "-status";

    public async Task Consume(ConsumeContext<IoEventSubmitted> context)
    {
        var headers = context.ReceiveContext.TransportHeaders;
        var reason = headers.Get<string>("x-first-death-reason");
        if (reason is null)
        {
            // Moved by MassTransit after its last attempt (fault headers, status already dead), or a replay.
            return;
        }

        var message = context.Message;
        var deliveries = IoLaneTopology.DeliveryLimit + 1;
        var error = $"dead-lettered by RabbitMQ ({reason}): the worker stopped before acknowledging it {deliveries} times";
        logger.LogWarning("Event {EventId} was dead-lettered by the broker ({Reason}) into {ErrorQueue}; marking it dead",
            message.EventId, reason, IoLaneTopology.ErrorQueueName);
        await FinalStatusWrite.UntilWrittenAsync(() => statuses.MarkDeadAsync(message.EventId, deliveries, error),
            message.EventId, EventStates.Dead, logger, context.CancellationToken);
        metrics.Finished(Lanes.Io, Outcomes.Dead, message.AcceptedAt);
    }
}
