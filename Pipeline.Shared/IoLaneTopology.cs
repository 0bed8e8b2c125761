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
    /// MassTransit's exchange for <see cref="EventPipeline.Contracts.IoEventSubmitted"/> (its entity name,
    /// <c>namespace:name</c>, fanout): where the lane's events are published and what Worker.Io's endpoint binds.
    /// </summary>
    public const string MessageExchange = "EventPipeline.Contracts:IoEventSubmitted";

    /// <summary>The message type MassTransit's consumer reads from the envelope (<c>urn:message:namespace:name</c>).</summary>
    public const string MessageType = "urn:message:" + MessageExchange;

    /// <summary>
    /// The lane queue's arguments besides its type, the one list both declarations use (MassTransit's in
    /// <see cref="ConfigureQueue"/>, the publisher's in <see cref="DeclareAsync"/>): a queue declared twice with
    /// different arguments is refused with PRECONDITION_FAILED.
    /// </summary>
    public static IReadOnlyDictionary<string, object> QueueArguments { get; } = new Dictionary<string, object>
    {
        // MassTransit's SetQuorumQueue sets no delivery limit: without one a poison message loops forever.
        ["x-delivery-limit"] = DeliveryLimit,
        ["x-dead-letter-exchange"] = ErrorQueueName,
        ["x-dead-letter-strategy"] = "at-least-once",
        ["x-overflow"] = "reject-publish",
    };

    public static void ConfigureQueue(IRabbitMqQueueConfigurator queue)
    {
        queue.Durable = true;
        queue.AutoDelete = false;
        queue.SetQuorumQueue();
        foreach (var (name, value) in QueueArguments)
        {
            queue.SetQueueArgument(name, value);
        }
    }

    /// <summary>
    /// Declares what a publisher needs, as MassTransit declares it for Worker.Io: the error exchange and queue (the
    /// lane queue's dead-letter target), the message type's fanout exchange, the lane queue with
    /// <see cref="QueueArguments"/>, and the binding between them. The queue is bound straight to the message type's
    /// exchange, so an event published before any worker ever ran is routed to it (binding an "events-io" exchange to
    /// the queue left the message exchange with no route until Worker.Io bound it: publishes were confirmed and
    /// dropped). RabbitMQ delivers one copy per queue however many routes lead there.
    /// </summary>
    public static async Task DeclareAsync(RabbitMQ.Client.IChannel channel, CancellationToken cancellationToken)
    {
        await DeclareErrorQueueAsync(channel, cancellationToken);
        await channel.ExchangeDeclareAsync(MessageExchange, RabbitMQ.Client.ExchangeType.Fanout, durable: true, autoDelete: false,
            cancellationToken: cancellationToken);
        var arguments = new Dictionary<string, object?>(QueueArguments.Select(a => KeyValuePair.Create(a.Key, (object?)a.Value)))
        {
            ["x-queue-type"] = "quorum",
        };
        await channel.QueueDeclareAsync(QueueName, durable: true, exclusive: false, autoDelete: false, arguments: arguments,
            cancellationToken: cancellationToken);
        await channel.QueueBindAsync(QueueName, MessageExchange, "", cancellationToken: cancellationToken);
    }

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

    /// <summary>
    /// The error queue, declared alike by MassTransit's error transport (which otherwise copies every argument of the
    /// lane's queue) and by the broker's dead-letter binding: durable quorum with no delivery limit and no dead-letter
    /// target, so a dead letter stays until an operator replays or deletes it, however often it is inspected.
    /// </summary>
    public static void ConfigureErrorQueue(IRabbitMqQueueBindingConfigurator queue)
    {
        queue.Durable = true;
        queue.AutoDelete = false;
        queue.SetQueueArgument("x-queue-type", "quorum");
        foreach (var argument in QueueArguments.Keys)
        {
            queue.SetQueueArgument(argument, null!); // null removes an argument copied from the lane's queue
        }
    }
}
