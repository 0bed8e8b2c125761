using MassTransit;

namespace EventPipeline.Shared;

/// <summary>
/// The RabbitMQ shape of the I/O lane, declared identically by the API (so a published event always has a queue to
/// land in, even before any worker ever started) and by Worker.Io (which consumes it).
/// </summary>
public static class IoLaneTopology
{
    public const string QueueName = "events-io";

    /// <summary>MassTransit's own error queue name; it also receives what the broker dead-letters.</summary>
    public const string ErrorQueueName = QueueName + "_error";

    /// <summary>Deliveries after which the broker itself dead-letters a message (a consumer that keeps dying).</summary>
    public const int DeliveryLimit = 3;

    public static void ConfigureQueue(IRabbitMqQueueConfigurator queue)
    {
        queue.Durable = true;
        queue.AutoDelete = false;
        queue.SetQuorumQueue();
        // MassTransit's SetQuorumQueue sets no delivery limit: without one a poison message loops forever.
        queue.SetQueueArgument("x-delivery-limit", DeliveryLimit);
        queue.SetQueueArgument("x-dead-letter-exchange", ErrorQueueName);
        queue.SetQueueArgument("x-dead-letter-strategy", "at-least-once");
        queue.SetQueueArgument("x-overflow", "reject-publish");
    }

    /// <summary>
    /// <c>events-io_error</c>: a durable quorum queue without the lane queue's delivery limit and dead-letter target.
    /// MassTransit copies the input queue's arguments to its error queue; left alone, the error queue would dead-letter
    /// into itself, and the worker's own declaration of it would not match (PRECONDITION_FAILED, faults never moved).
    /// </summary>
    public static void ConfigureErrorQueue(IRabbitMqQueueConfigurator queue)
    {
        queue.Durable = true;
        queue.AutoDelete = false;
        queue.SetQuorumQueue();
        queue.SetQueueArgument("x-delivery-limit", null);
        queue.SetQueueArgument("x-dead-letter-exchange", null);
        queue.SetQueueArgument("x-dead-letter-strategy", null);
        queue.SetQueueArgument("x-overflow", null);
    }
}
