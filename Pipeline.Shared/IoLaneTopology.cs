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

    /// <summary>
    /// Publishers bind the lane's queue straight to the message type's exchange, so an event published before any
    /// worker ever ran is routed to the queue. (Binding an "events-io" exchange to the queue left the message exchange
    /// with no route until Worker.Io bound it: publishes were confirmed and dropped.) RabbitMQ delivers one copy per
    /// queue however many routes lead there.
    /// </summary>
    public static void BindQueueOnPublish(IRabbitMqBusFactoryConfigurator bus) =>
        bus.Publish<EventPipeline.Contracts.IoEventSubmitted>(publish =>
            publish.BindQueue(publish.Exchange.ExchangeName, QueueName, ConfigureQueue));

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
    /// The error queue, declared alike by MassTransit's error transport (which otherwise copies every argument of the
    /// lane's queue) and by the broker's dead-letter binding: durable quorum with no delivery limit and no dead-letter
    /// target, so a dead letter stays until an operator replays or deletes it, however often it is inspected.
    /// </summary>
    /// <summary>
    /// Declares <c>events-io_error</c> (fanout exchange → quorum queue) exactly as MassTransit's error transport does.
    /// Publishers call this at start: the lane queue dead-letters into that exchange with the at-least-once strategy,
    /// and until the exchange exists (it used to appear only when Worker.Io first ran) a restarted broker cannot
    /// bring the lane queue back into service.
    /// </summary>
    public static async Task DeclareErrorQueueAsync(RabbitMQ.Client.IChannel channel, CancellationToken cancellationToken)
    {
        await channel.ExchangeDeclareAsync(ErrorQueueName, RabbitMQ.Client.ExchangeType.Fanout, durable: true, autoDelete: false,
            cancellationToken: cancellationToken);
        await channel.QueueDeclareAsync(ErrorQueueName, durable: true, exclusive: false, autoDelete: false,
            arguments: new Dictionary<string, object?> { ["x-queue-type"] = "quorum" }, cancellationToken: cancellationToken);
        await channel.QueueBindAsync(ErrorQueueName, ErrorQueueName, "", cancellationToken: cancellationToken);
    }

    public static void ConfigureErrorQueue(IRabbitMqQueueBindingConfigurator queue)
    {
        queue.Durable = true;
        queue.AutoDelete = false;
        queue.SetQueueArgument("x-queue-type", "quorum");
        foreach (var argument in (string[])["x-delivery-limit", "x-dead-letter-exchange", "x-dead-letter-strategy", "x-overflow"])
        {
            queue.SetQueueArgument(argument, null!); // null removes an argument copied from the lane's queue
        }
    }
}
