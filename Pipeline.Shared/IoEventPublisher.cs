using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text.Encodings.Web;
using System.Text.Json;
using EventPipeline.Contracts;
using EventPipeline.ServiceDefaults;
using Microsoft.Extensions.Logging;
using RabbitMQ.Client;

[assembly: InternalsVisibleTo("Producer.Api.UnitTests")]

namespace EventPipeline.Shared;

/// <summary>
/// Publishes I/O-lane events and returns only once RabbitMQ confirmed every one of them: the await completes when the
/// broker holds each message in the durable quorum queue, and throws when any was nacked, returned (mandatory: no queue
/// took it), not confirmed before the token fired, or lost with its channel. A channel that saw any of these is closed
/// and replaced by a fresh one — never used again; after a refusal by the broker every idle channel goes too and the
/// replacement declares the lane's topology again (<see cref="IoLaneTopology.DeclareAsync"/>), so a queue deleted or lost
/// in a broker reset comes back. A caller that gives up never leaves a channel open behind it.
/// Used by the API (ingest, due delayed events) and by Worker.Cpu's hand-off to the I/O lane.
/// </summary>
/// <remarks>
/// Hand-written on RabbitMQ.Client rather than MassTransit's publish, for two reasons. (1) MassTransit keeps the channel
/// a nack came on, and RabbitMQ 3.10's quorum queue with <c>reject-publish</c> leaves such a channel refusing every later
/// publish until the queue sends it a "go" — which a new leader after a node's death does not always send, and which
/// never comes when a <c>max-length</c> policy is simply cleared: the API answered 503 for minutes (issue 15; pinned by
/// <c>IoPublishRecoveryTests</c>). (2) MassTransit's <c>PublishBatch</c> sends message by message through its pipeline
/// (with Worker.Io's consumer, MassTransit and RabbitMQ.Client were ≈ 40 % of the API's CPU on the I/O path,
/// docs/benchmarks.md); here a chunk is written at once and its confirms are awaited together. The consumer side stays
/// MassTransit: each message is MassTransit's JSON envelope (<see cref="IoLaneEnvelope"/>) on the message type's
/// exchange, with the trace context in the header MassTransit's receive reads, so Worker.Io is unchanged.
/// </remarks>
public sealed class IoEventPublisher(IoLaneConnection connection, ILogger<IoEventPublisher> logger) : IAsyncDisposable
{
    /// <summary>Channels kept open between publishes; more concurrent publishes open more and close them afterwards.</summary>
    private const int IdleChannels = 16;

    /// <summary>
    /// Channels open at once, at most (the broker's <c>channel_max</c> is 2,047 per connection): a publish past it waits for
    /// a channel within its own deadline, and a request that cannot get one in time is answered 503 like any slow broker.
    /// </summary>
    private const int MaxChannels = 128;

    private static readonly CreateChannelOptions ChannelOptions = new(
        publisherConfirmationsEnabled: true,
        publisherConfirmationTrackingEnabled: true,
        // No throttling: a publish is one request's chunk (bounded by the caller), its confirms awaited together.
        outstandingPublisherConfirmationsRateLimiter: null);

    private readonly ConcurrentQueue<(IChannel Channel, int Epoch)> _idle = new();
    private readonly SemaphoreSlim _channels = new(MaxChannels, MaxChannels);

    /// <summary>
    /// The connection generation and epoch (<see cref="DeclaredKey"/>) the lane was last declared in: a new channel
    /// declares again unless both are still the same, so a refusal or a recovery while a declare runs is never lost.
    /// </summary>
    private long _declared = -1;

    /// <summary>
    /// Moves on when the broker refuses a publish (a nack, a return, or a channel it closed). RabbitMQ 3.10's quorum
    /// queue tells every channel that ever published to it that it is refused (<c>reject_publish</c> goes to all its
    /// enqueuers at once), so a refusal on one channel means the idle ones are refused too: they are all closed, a
    /// channel rented before it is not put back, and the next new channel declares the lane again. A publish that failed
    /// for any other reason (the caller gave up, the connection is down) closes only its own channel.
    /// </summary>
    private int _epoch;

    private int _channelsOpened;

    /// <summary>Channels this publisher has opened so far (tests: a publish that should reuse an idle channel opens none).</summary>
    internal int ChannelsOpened => Volatile.Read(ref _channelsOpened);

    public async Task PublishAsync(IReadOnlyList<IoEventSubmitted> events, CancellationToken cancellationToken)
    {
        if (events.Count == 0)
        {
            return;
        }

        using var activity = PipelineTelemetry.ActivitySource.StartActivity($"{IoLaneTopology.MessageExchange} publish", ActivityKind.Producer);
        activity?.SetTag("messaging.system", "rabbitmq");
        activity?.SetTag("messaging.destination.name", IoLaneTopology.MessageExchange);
        activity?.SetTag("messaging.operation.type", "send");
        activity?.SetTag("messaging.batch.message_count", events.Count);
        // MassTransit's receive continues the trace of the W3C id in this header (and nothing else).
        var parent = (activity ?? Activity.Current)?.Id;

        IChannel? channel = null;
        var epoch = 0;
        var healthy = false;
        Exception? failure = null;
        Task[]? confirms = null;
        var slot = new Slot();
        await _channels.WaitAsync(cancellationToken);
        try
        {
            (channel, epoch) = await RentAsync(slot, cancellationToken);
            var sentTime = DateTime.UtcNow;
            confirms = new Task[events.Count];
            for (var i = 0; i < events.Count; i++)
            {
                var messageId = Guid.NewGuid();
                var properties = new BasicProperties
                {
                    MessageId = messageId.ToString(),
                    ContentType = IoLaneEnvelope.ContentType,
                    DeliveryMode = DeliveryModes.Persistent,
                    Headers = parent is null ? null : new Dictionary<string, object?> { [IoLaneEnvelope.ActivityIdHeader] = parent },
                };
                // Not awaited one by one: every message of the chunk is on the wire before the first confirm is awaited.
                confirms[i] = channel.BasicPublishAsync(IoLaneTopology.MessageExchange, "", mandatory: true, properties,
                    IoLaneEnvelope.Serialize(events[i], messageId, sentTime, connection.ExchangeAddress, parent), cancellationToken).AsTask();
            }

            await Task.WhenAll(confirms);
            healthy = true;
        }
        catch (Exception ex)
        {
            failure = ex;
            activity?.SetStatus(ActivityStatusCode.Error, ex.Message);
            throw;
        }
        finally
        {
            if (healthy)
            {
                Return(channel!, epoch);
            }
            else
            {
                if (IsRefusal(failure, channel, confirms))
                {
                    // The queue refused (on RabbitMQ 3.10 this channel and every other that published to it may stay
                    // refused) or the broker closed the channel: no channel open now is used again, and the next one
                    // declares the lane again.
                    Interlocked.Increment(ref _epoch);
                    while (_idle.TryDequeue(out var idle))
                    {
                        _ = DiscardAsync(idle.Channel);
                    }
                }

                // Its confirms may still be outstanding (a caller that gave up), so this channel is never reused. Closed in
                // the background: a paused broker must not hold the 503.
                if (channel is not null)
                {
                    _ = DiscardAsync(channel);
                }
            }

            if (!slot.HandedOff)
            {
                _channels.Release();
            }
        }
    }

    /// <summary>
    /// A refusal by the broker, not a caller that gave up or a connection that is down: a nack
    /// (<see cref="RabbitMQ.Client.Exceptions.PublishException"/>), a return (its subclass, <c>IsReturn</c>), or the
    /// broker closing the channel.
    /// </summary>
    private static bool IsRefusal(Exception? failure, IChannel? channel, Task[]? confirms) =>
        failure is RabbitMQ.Client.Exceptions.PublishException
        || (confirms is not null && confirms.Any(c => c is { IsFaulted: true }
            && c.Exception!.InnerExceptions.Any(e => e is RabbitMQ.Client.Exceptions.PublishException)))
        || channel is { IsOpen: false, CloseReason.Initiator: ShutdownInitiator.Peer };

    private static long DeclaredKey(int generation, int epoch) => ((long)generation << 32) | (uint)epoch;

    private async Task<(IChannel Channel, int Epoch)> RentAsync(Slot slot, CancellationToken cancellationToken)
    {
        var epoch = Volatile.Read(ref _epoch);
        // After a recovery (a new generation) the idle channels come back on the new connection but nothing declared
        // the lane there (the broker may have lost it): they are not used until a new channel has declared it again.
        var declaredNow = Volatile.Read(ref _declared) == DeclaredKey(connection.Generation, epoch);
        while (_idle.TryDequeue(out var idle))
        {
            if (idle.Epoch == epoch && idle.Channel.IsOpen && declaredNow)
            {
                return idle;
            }

            _ = DiscardAsync(idle.Channel);
        }

        var open = await connection.GetAsync(cancellationToken);
        var generation = connection.Generation;
        var channel = await OpenChannelAsync(open, slot, cancellationToken);
        try
        {
            var key = DeclaredKey(generation, epoch);
            if (Volatile.Read(ref _declared) != key)
            {
                await IoLaneTopology.DeclareAsync(channel, cancellationToken);
                // The key of the generation and epoch read before the declare: a refusal or a recovery meanwhile moved
                // them on, so the next channel declares again (an extra declare is harmless, a lost one is not).
                Volatile.Write(ref _declared, key);
            }

            return (channel, epoch);
        }
        catch
        {
            _ = DiscardAsync(channel);
            throw;
        }
    }

    /// <summary>
    /// Opens a channel without passing the caller's token to RabbitMQ.Client: its 7.2 <c>Channel.OpenAsync</c>, cancelled
    /// after <c>channel.open</c> went out, neither closes the session nor hands the channel back, so the broker keeps it
    /// open for the life of the connection (towards <c>channel_max</c>, then every publish is refused). The open is
    /// bounded by the connection's <c>ContinuationTimeout</c> (10 s); a caller that gives up leaves it to finish, and the
    /// channel is closed then. Until that, it keeps its place under <see cref="MaxChannels"/> (<paramref name="slot"/>).
    /// Not covered: an open that takes longer than <c>ContinuationTimeout</c> ends in the library's own timeout, which
    /// takes the same path, so a broker slower than 10 s per <c>channel.open</c> still leaves up to
    /// <see cref="MaxChannels"/> channels per episode on its side (a library limit of 7.2.2; documented in io-lane.md).
    /// </summary>
    private async Task<IChannel> OpenChannelAsync(IConnection open, Slot slot, CancellationToken cancellationToken)
    {
        var opening = open.CreateChannelAsync(ChannelOptions, CancellationToken.None);
        try
        {
            var channel = await opening.WaitAsync(cancellationToken);
            Interlocked.Increment(ref _channelsOpened);
            return channel;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            slot.HandedOff = true;
            _ = DiscardWhenOpenedAsync(opening);
            throw;
        }
    }

    private async Task DiscardWhenOpenedAsync(Task<IChannel> opening)
    {
        try
        {
            await DiscardAsync(await opening);
        }
        catch (Exception ex)
        {
            logger.LogDebug(ex, "An I/O-lane publishing channel whose caller gave up did not open");
        }
        finally
        {
            _channels.Release();
        }
    }

    /// <summary>Whether a publish's place under <see cref="MaxChannels"/> went to a channel still opening in the background.</summary>
    private sealed class Slot
    {
        public bool HandedOff { get; set; }
    }

    private void Return(IChannel channel, int epoch)
    {
        if (channel.IsOpen && epoch == Volatile.Read(ref _epoch) && _idle.Count < IdleChannels)
        {
            _idle.Enqueue((channel, epoch));
        }
        else
        {
            _ = DiscardAsync(channel);
        }
    }

    private async Task DiscardAsync(IChannel channel)
    {
        try
        {
            if (channel.IsOpen)
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                await channel.AbortAsync(timeout.Token);
            }

            await channel.DisposeAsync();
        }
        catch (Exception ex)
        {
            logger.LogDebug(ex, "Closing a replaced I/O-lane publishing channel failed");
        }
    }

    public async ValueTask DisposeAsync()
    {
        while (_idle.TryDequeue(out var idle))
        {
            await DiscardAsync(idle.Channel);
        }
    }
}

/// <summary>
/// MassTransit's JSON envelope (<c>application/vnd.masstransit+json</c>, as MassTransit 8.5's
/// <c>SystemTextJsonMessageSerializer</c> writes <c>JsonMessageEnvelope</c>: camelCase, the message under
/// <c>message</c>, its type URNs under <c>messageType</c>) around one <see cref="IoEventSubmitted"/>, so Worker.Io's
/// MassTransit consumer, MassTransit's error queue and the dead-letter API read it as one MassTransit published.
/// </summary>
public static class IoLaneEnvelope
{
    public const string ContentType = "application/vnd.masstransit+json";

    /// <summary>MassTransit's <c>DiagnosticHeaders.ActivityId</c>: the transport header its receive takes the parent span from.</summary>
    public const string ActivityIdHeader = "MT-Activity-Id";

    private static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web)
    {
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    private static readonly Dictionary<string, string> NoHeaders = [];

    /// <param name="activityId">the publish span's W3C id: MassTransit writes it into the envelope's headers as well as the transport's.</param>
    /// <param name="destinationAddress">the exchange's address (<see cref="IoLaneConnection.ExchangeAddress"/>).</param>
    public static byte[] Serialize(IoEventSubmitted message, Guid messageId, DateTime sentTime, Uri destinationAddress, string? activityId) =>
        JsonSerializer.SerializeToUtf8Bytes(new Envelope(messageId.ToString(), destinationAddress.ToString(), [IoLaneTopology.MessageType], message, sentTime,
            activityId is null ? NoHeaders : new Dictionary<string, string> { [ActivityIdHeader] = activityId }), Options);

    /// <summary>The fields of MassTransit's <c>JsonMessageEnvelope</c> its consumer needs; the others are optional.</summary>
    private sealed record Envelope(string MessageId, string DestinationAddress, string[] MessageType, IoEventSubmitted Message, DateTime SentTime,
        Dictionary<string, string> Headers);
}
