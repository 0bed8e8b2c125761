using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using EventPipeline.Contracts;
using EventPipeline.Producer.Monitoring;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;

namespace EventPipeline.Producer.DeadLetters;

/// <summary>
/// The I/O lane's dead letters: the <c>events-io_error</c> queue, where MassTransit moves a message after its last
/// attempt (fault headers <c>MT-Fault-*</c>) and where the broker dead-letters a message whose consumer kept dying
/// (<c>x-death</c> headers). A queue has no random access, so every operation reads messages with basic.get on its own
/// channels without acknowledging them, and closing them hands back every message it did not acknowledge, in the order
/// the queue had (<see cref="QueueScan"/> says how, given what RabbitMQ 3.10's quorum queue does with returns). A replay first records the replay in the event's status (refused when the event already succeeded: then the
/// stale dead letter is dropped and nothing is published), then publishes a copy to <c>events-io</c> with publisher
/// confirms (mandatory, so a missing queue is an error) and acknowledges the dead letter only after the confirm: the
/// worker's status writes come after the replay's, so they win, and at worst a crash in between leaves the event both
/// replayed and still listed, never lost. Fault headers of earlier deaths travel with the message as
/// <c>EP-Error-History</c>, so the history survives replays. Dead letters older than
/// <see cref="StatusOptions.DeadLetterRetention"/> are dropped by every scan that meets them.
/// <para>
/// A message a scan holds (read, not yet handed back) is invisible to every other reader of the queue, so two scans
/// side by side hid dead letters from each other: a delete or replay answered 404 for a dead letter that was there before
/// it, a delete-all or replay-all left some, a list missed some. So this process runs one scan at a time, lists, lookups
/// and counts included (<see cref="_scans"/>: later ones wait their turn, up to <see cref="DeadLetterOptions.ScanQueueTimeout"/>,
/// 15 s, then 409 busy). A replay-all or delete-all counts what remains inside its own scan, before the next one starts. Scans of other API replicas
/// are not ordered with these: only the operations that change the lane exclude each other across replicas
/// (<see cref="DeadLetterLock"/>), so a list on one replica can still hide a dead letter from a delete on another.
/// </para>
/// </summary>
public sealed class IoDeadLetters(LazyRabbitMqConnection rabbit, EventStatusStore statuses, DeadLetterLock locks, IOptions<DeadLetterOptions> options,
    ILogger<IoDeadLetters> logger) : IDeadLetterLane
{
    public const string HistoryHeader = "EP-Error-History";

    /// <summary>How long one replayed copy may wait for its publisher confirm (a paused broker must not hold the lock for ever).</summary>
    private static readonly TimeSpan PublishTimeout = TimeSpan.FromSeconds(10);
    private static readonly JsonSerializerOptions Envelope = new(JsonSerializerDefaults.Web);

    /// <summary>
    /// How long each part of a scan's hand-back may take: the read-on (only after reads that did not fail), and the
    /// count, closes and waits until the queue holds its messages again. A broker that stops answering mid-read holds a
    /// scan for its stalled call (the client's continuation timeout, 5 s), then no read-on, no counting and one 0.5 s
    /// wait for the first close, ~5.5 s; one that stops during the hand-back, up to about twice this plus 0.5 s.
    /// </summary>
    private static readonly TimeSpan HandBackTimeout = TimeSpan.FromSeconds(2);

    /// <summary>One scan of the error queue at a time in this process, from its first read until the queue holds back what it read.</summary>
    private readonly SemaphoreSlim _scans = new(1, 1);

    public string Lane => Lanes.Io;

    /// <summary>A cursor is a position in the queue, as <see cref="ListAsync"/> hands it out.</summary>
    public bool IsCursor(string after) => int.TryParse(after, NumberStyles.None, CultureInfo.InvariantCulture, out _);

    public Task<long> CountAsync(CancellationToken cancellationToken) => Guard(cancellationToken, async () =>
    {
        // The queue counts only the messages no scan holds: counted between scans, or not at all (409 busy), never low.
        // A finished replay-all or delete-all does not come here: it counts inside its own scan.
        await EnterScanAsync(cancellationToken);
        try
        {
            var connection = await rabbit.GetAsync(cancellationToken);
            await using var channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken);
            try
            {
                return (long)(await channel.QueueDeclarePassiveAsync(IoLaneTopology.ErrorQueueName, cancellationToken)).MessageCount;
            }
            catch (OperationInterruptedException ex) when (ex.ShutdownReason?.ReplyCode == 404)
            {
                return 0L; // nothing ever failed: MassTransit declares the error queue on the first fault
            }
        }
        finally
        {
            _scans.Release();
        }
    });

    public Task<DeadLetterPage> ListAsync(string? after, int limit, CancellationToken cancellationToken) => Guard(cancellationToken, async () =>
    {
        // The cursor is a position in the queue: good for paging a queue that is not changing under you.
        var skip = after is not null && int.TryParse(after, NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : 0;
        await using var scan = await ScanAsync(cancellationToken);
        var items = new List<DeadLetterSummary>();
        var position = 0;
        var more = false;
        while (position < options.Value.MaxScan && await scan.NextAsync() is { } message)
        {
            if (position++ < skip)
            {
                continue;
            }

            if (items.Count == limit)
            {
                more = true;
                break;
            }

            items.Add(Parse(message).Summary());
        }

        var total = scan.QueueLength;
        return new DeadLetterPage(Lane, total, items, more ? (skip + limit).ToString(CultureInfo.InvariantCulture) : null);
    });

    public Task<DeadLetter?> GetAsync(string id, CancellationToken cancellationToken) => Guard(cancellationToken, async () =>
    {
        await using var scan = await ScanAsync(cancellationToken);
        return await scan.FindAsync(id, options.Value.MaxScan) is { } message ? Parse(message) : null;
    });

    public Task<ReplayOutcome> ReplayAsync(string id, CancellationToken cancellationToken) => Guard(cancellationToken, async () =>
    {
        await using var held = await locks.AcquireAsync(Lane);
        await using var scan = await ScanAsync(cancellationToken);
        return await scan.FindAsync(id, options.Value.MaxScan) is { } message
            ? await ReplayAsync(scan, message, cancellationToken)
            : ReplayOutcome.NotFound;
    });

    public Task<ReplayAllResult> ReplayAllAsync(int max, CancellationToken cancellationToken) => Guard(cancellationToken, async () =>
    {
        await using var held = await locks.AcquireAsync(Lane);
        await using var scan = await ScanAsync(cancellationToken);
        var replayed = 0;
        var dropped = 0;
        // Bounded by the queue length at the start, so a message that dies again at once is not replayed twice in one call.
        var bound = (int)Math.Min(max, scan.QueueLength);
        while (await scan.NextAsync(bound) is { } message)
        {
            if (await ReplayAsync(scan, message, cancellationToken) == ReplayOutcome.Replayed)
            {
                replayed++;
            }
            else
            {
                dropped++;
            }
        }

        return new ReplayAllResult(replayed, dropped, await scan.RemainingAsync());
    });

    public Task<bool> DeleteAsync(string id, CancellationToken cancellationToken) => Guard(cancellationToken, async () =>
    {
        await using var held = await locks.AcquireAsync(Lane);
        await using var scan = await ScanAsync(cancellationToken);
        if (await scan.FindAsync(id, options.Value.MaxScan) is not { } message)
        {
            return false;
        }

        await scan.AckAsync(message, cancellationToken);
        return true;
    });

    public Task<DeleteAllResult> DeleteAllAsync(int max, CancellationToken cancellationToken) => Guard(cancellationToken, async () =>
    {
        await using var held = await locks.AcquireAsync(Lane);
        await using var scan = await ScanAsync(cancellationToken);
        // Bounded by the queue length at the start, as replay-all is. Each message taken is acknowledged on the channel
        // that got it, which is the delete; whatever this call did not take stays in its place.
        var bound = (int)Math.Min(max, scan.QueueLength);
        var deleted = 0;
        while (await scan.NextAsync(bound) is { } message)
        {
            await scan.AckAsync(message, cancellationToken);
            deleted++;
        }

        return new DeleteAllResult(deleted, await scan.RemainingAsync());
    });

    private async Task<ReplayOutcome> ReplayAsync(QueueScan scan, BasicGetResult message, CancellationToken cancellationToken)
    {
        var dead = Parse(message);
        // A dead letter of an event that already succeeded (a duplicate dead-lettered after, or while, another copy
        // finished) is dropped: replaying it would run the event again.
        var seen = await statuses.GetReplayViewAsync(dead.Id);
        if (seen.State == EventStates.Succeeded)
        {
            logger.LogInformation("Dropped the dead letter of {EventId} instead of replaying it: the event already succeeded", dead.Id);
            await scan.AckAsync(message, cancellationToken);
            return ReplayOutcome.AlreadySucceeded;
        }

        var properties = new BasicProperties(message.BasicProperties)
        {
            Persistent = true,
            Headers = new Dictionary<string, object?>(StringComparer.Ordinal),
        };
        foreach (var (name, value) in message.BasicProperties.Headers ?? new Dictionary<string, object?>())
        {
            if (!IsDeathHeader(name))
            {
                properties.Headers[name] = value;
            }
        }

        properties.Headers[HistoryHeader] = Encoding.UTF8.GetBytes(PayloadJson.WriteHistory(dead.Errors));
        // Order: the copy into the lane, then the dead letter acknowledged, then the status — each step safe to die after.
        // Dying after the publish leaves the copy in the lane and the dead letter listed (a later replay of it drops it
        // once the copy succeeded); the status stays dead until the worker writes, never accepted with no copy anywhere.
        using (var publishTimeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
        {
            publishTimeout.CancelAfter(PublishTimeout);
            // Straight to the lane's queue through the default exchange; mandatory turns a missing queue into an error.
            await scan.Channel.BasicPublishAsync("", IoLaneTopology.QueueName, mandatory: true, properties, message.Body, publishTimeout.Token);
        }

        await scan.AckAsync(message, cancellationToken);
        try
        {
            if (!await statuses.MarkReplayedIfUnchangedAsync(dead.Id, dead.Type, Lane, dead.AcceptedAt ?? DateTimeOffset.UtcNow, seen.State, seen.FinishedAt))
            {
                logger.LogInformation("Replayed {EventId}; its worker wrote its status first", dead.Id);
            }
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
        {
            logger.LogWarning(ex, "Replayed {EventId}, but its status could not be set to accepted; the worker's writes will show its progress", dead.Id);
        }

        return ReplayOutcome.Replayed;
    }

    /// <summary>Headers of the last death: dropped on replay (MassTransit and the broker add fresh ones if it dies again).</summary>
    private static bool IsDeathHeader(string name) =>
        name.StartsWith("MT-Fault-", StringComparison.OrdinalIgnoreCase)
        || name.StartsWith("MT-Host-", StringComparison.OrdinalIgnoreCase)
        || name.Equals("MT-Reason", StringComparison.OrdinalIgnoreCase)
        || name.StartsWith("x-death", StringComparison.OrdinalIgnoreCase)
        || name.StartsWith("x-first-death-", StringComparison.OrdinalIgnoreCase)
        || name.StartsWith("x-last-death-", StringComparison.OrdinalIgnoreCase)
        || name.Equals("x-delivery-count", StringComparison.OrdinalIgnoreCase)
        || name.Equals(HistoryHeader, StringComparison.Ordinal);

    internal static DeadLetter Parse(BasicGetResult message)
    {
        var headers = message.BasicProperties.Headers ?? new Dictionary<string, object?>();
        IoEventSubmitted? submitted = null;
        try
        {
            using var envelope = JsonDocument.Parse(message.Body);
            if (envelope.RootElement.TryGetProperty("message", out var body))
            {
                submitted = body.Deserialize<IoEventSubmitted>(Envelope);
            }
        }
        catch (JsonException)
        {
            // Not a MassTransit envelope: still listed (by its message id) so it can be inspected and deleted.
        }

        var history = PayloadJson.ParseHistory(Text(headers, HistoryHeader));
        DeadLetterError error;
        string reason;
        int? attempts;
        DateTimeOffset? deadAt;
        if (Text(headers, "MT-Fault-ExceptionType") is { } faultType)
        {
            reason = "failed";
            error = new DeadLetterError(faultType, Text(headers, "MT-Fault-Message"), Text(headers, "MT-Fault-StackTrace"));
            attempts = int.TryParse(Text(headers, "MT-Fault-RetryCount"), CultureInfo.InvariantCulture, out var retries) ? retries + 1 : null;
            deadAt = DateTimeOffset.TryParse(Text(headers, "MT-Fault-Timestamp"), CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var at) ? at : null;
        }
        else
        {
            // Dead-lettered by the broker itself (x-death): the consumer never finished, so there is no exception.
            var death = FirstDeath(headers);
            reason = death.Reason == "delivery_limit" ? "delivery-limit" : death.Reason ?? "unknown";
            error = new DeadLetterError("BrokerDeadLetter", $"RabbitMQ dead-lettered the message from {death.Queue ?? IoLaneTopology.QueueName} ({death.Reason ?? "no reason given"})", null);
            // Not from x-delivery-count: in the error queue that header counts the error queue's own deliveries (every
            // read of it raises it), not the lane's. The lane's delivery limit is what dead-lettered it: that many
            // deliveries and one more (race review of s12-dlorder, M5).
            attempts = death.Reason == "delivery_limit" ? IoLaneTopology.DeliveryLimit + 1 : null;
            deadAt = death.Time;
        }

        history.Add(new DeadLetterHistoryEntry(attempts, error.Type, error.Message, deadAt));
        return new DeadLetter(
            Id: submitted?.EventId ?? message.BasicProperties.MessageId ?? "",
            Lane: Lanes.Io,
            Type: submitted?.Type ?? "",
            Payload: PayloadJson.Parse(submitted?.Payload),
            AcceptedAt: submitted?.AcceptedAt,
            DeadAt: deadAt,
            Attempts: attempts,
            Reason: reason,
            Error: error,
            Errors: history);
    }

    private static (string? Reason, string? Queue, DateTimeOffset? Time) FirstDeath(IDictionary<string, object?> headers)
    {
        if (headers.TryGetValue("x-death", out var value) && value is IList<object> deaths && deaths.Count > 0
            && deaths[0] is IDictionary<string, object?> first)
        {
            var time = first.TryGetValue("time", out var t) && t is AmqpTimestamp ts
                ? DateTimeOffset.FromUnixTimeSeconds(ts.UnixTime)
                : (DateTimeOffset?)null;
            return (Text(first, "reason"), Text(first, "queue"), time);
        }

        return (Text(headers, "x-first-death-reason"), Text(headers, "x-first-death-queue"), null);
    }

    private static string? Text(IDictionary<string, object?> headers, string name) =>
        headers.TryGetValue(name, out var value) ? value switch
        {
            null => null,
            byte[] bytes => Encoding.UTF8.GetString(bytes),
            string s => s,
            _ => Convert.ToString(value, CultureInfo.InvariantCulture),
        } : null;

    /// <summary>Starts a scan once no other scan of this process runs; disposing the scan lets the next one start.</summary>
    private async Task<QueueScan> ScanAsync(CancellationToken cancellationToken)
    {
        await EnterScanAsync(cancellationToken);
        IChannel? channel = null;
        try
        {
            var connection = await rabbit.GetAsync(cancellationToken);
            channel = await connection.CreateChannelAsync(
                new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true), cancellationToken);
            long length = 0;
            try
            {
                length = (await channel.QueueDeclarePassiveAsync(IoLaneTopology.ErrorQueueName, cancellationToken)).MessageCount;
            }
            catch (OperationInterruptedException ex) when (ex.ShutdownReason?.ReplyCode == 404)
            {
                await channel.DisposeAsync();
                return new QueueScan(null, null, 0, default, 0, _scans, cancellationToken);
            }

            return new QueueScan(connection, channel, length, DateTimeOffset.UtcNow - statuses.DeadLetterRetention, options.Value.MaxScan, _scans,
                cancellationToken);
        }
        catch
        {
            if (channel is not null)
            {
                await QueueScan.CloseAndDisposeAsync(channel);
            }

            _scans.Release();
            throw;
        }
    }

    private async Task EnterScanAsync(CancellationToken cancellationToken)
    {
        if (!await _scans.WaitAsync(options.Value.ScanQueueTimeout, cancellationToken))
        {
            throw new DeadLetterBusyException(Lane);
        }
    }

    private async Task<T> Guard<T>(CancellationToken requestAborted, Func<Task<T>> operation)
    {
        try
        {
            return await operation();
        }
        catch (OperationCanceledException ex) when (!requestAborted.IsCancellationRequested)
        {
            // The client's continuation timeout (e.g. opening a channel on a paused broker) surfaces as a cancellation.
            throw new DeadLetterStoreUnavailableException(Lane, ex);
        }
        catch (Exception ex) when (ex is RabbitMQClientException or OperationInterruptedException or PublishException
                                       or System.Net.Sockets.SocketException or IOException
                                   || RedisFailures.IsOutage(ex))
        {
            throw new DeadLetterStoreUnavailableException(Lane, ex);
        }
    }

    /// <summary>
    /// Reads the error queue without acknowledging and hands back what it held in the order the queue had, then lets
    /// this process's next scan start (<paramref name="scans"/>). A dead letter older than the retention (dead before
    /// <paramref name="expiredBefore"/>) is acknowledged, i.e. dropped, when met: its status expires with it.
    /// <para>
    /// Why the hand-back is done this way (RabbitMQ 3.10's quorum queue, rabbit_fifo): the queue is its "returns" (messages
    /// handed back, delivered first) followed by its never-delivered messages. A closed channel's unacknowledged messages
    /// go to the back of the returns, one basic.get consumer after the other in the order of their consumer tags, which
    /// are the channel's delivery tags as text ("1", "10", "11", "2"). A basic.nack/reject with requeue on a queue without
    /// a delivery limit puts the message at the very back, behind dead letters that came meanwhile. Nothing puts a message
    /// back at the front. So a scan keeps the order only if nothing handed back by an earlier read is still ahead of what
    /// it holds (before it hands back it reads on until the queue is empty or it gets a message never delivered before,
    /// <c>x-delivery-count</c> 0: then the returns were empty), and if each channel holds at most
    /// <see cref="GetsPerChannel"/> messages (one-digit delivery tags, whose text order is their order), the channels
    /// closed one after the other, each once the queue holds the one before's messages again. Without that a lookup of
    /// the newest of three followed by a list of two left the queue newest, oldest, middle, and a read of more than nine
    /// (any list of a longer lane) put the tenth second. RabbitMQ.Client has no call that hands a message back to its
    /// place, so this is the scan's own bookkeeping. Read from RabbitMQ 3.10.8's rabbit_fifo: handle_down (consumers of
    /// the dead channel by map key), return_one (into the returns queue), handle_aux for #return when delivery_limit is
    /// undefined (re-appended as #requeue to the messages); rabbit_channel uses the delivery tag as a basic.get's consumer tag.
    /// Cost: a read of n messages holds n / 9 channels while it runs (<see cref="DeadLetterOptions.MaxScan"/>, 10,000:
    /// about 1,112, under RabbitMQ's default channel_max of 2,047). Only a lane of at most <see cref="ReadOnLimit"/>
    /// messages is read on to its end: on a longer one a read costs what it reads, and the order is best effort (the
    /// prefix a read held goes back behind messages handed back earlier).
    /// </para>
    /// <para>
    /// The order is best effort where the broker gives no answer: a connection that dies mid-hand-back returns every
    /// channel at once (their order then is the broker's), and a read-on that cannot finish within
    /// <see cref="HandBackTimeout"/> or <paramref name="maxScan"/> messages hands back what it holds. No dead letter is
    /// lost either way: the error queue has no delivery limit, so returns only raise its <c>x-delivery-count</c>.
    /// </para>
    /// </summary>
    private sealed class QueueScan(IConnection? connection, IChannel? channel, long queueLength, DateTimeOffset expiredBefore, int maxScan,
        SemaphoreSlim scans, CancellationToken cancellationToken)
        : IAsyncDisposable
    {
        /// <summary>basic.get deliveries per channel: one-digit delivery tags, so the broker's text order of them is their order.</summary>
        private const int GetsPerChannel = 9;

        /// <summary>The longest lane (ready messages when the scan began) a scan reads on to the end of before handing back.</summary>
        public const int ReadOnLimit = 500;

        /// <summary>The scan's first channel: declares, and the replay's publishes (publisher confirms).</summary>
        public IChannel Channel => channel ?? throw new InvalidOperationException("no error queue");

        public long QueueLength => queueLength;

        /// <summary>The channels messages were got on, in the order they were read; the first is <see cref="Channel"/>.</summary>
        private readonly List<IChannel> _readers = channel is null ? [] : [channel];

        /// <summary>What each reader holds (got, not acknowledged), by delivery tag.</summary>
        private readonly Dictionary<IChannel, SortedSet<ulong>> _held = new(ReferenceEqualityComparer.Instance);

        /// <summary>Which reader got each message still held (delivery tags repeat across channels).</summary>
        private readonly Dictionary<BasicGetResult, IChannel> _readerOf = new(ReferenceEqualityComparer.Instance);

        private int _getsOnReader;

        /// <summary>
        /// True while no handed-back message can be ahead of the held ones: nothing read yet, the last get found the queue
        /// empty, or the last message got had never been delivered before (so the queue's returns were empty).
        /// </summary>
        private bool _nothingReturnedAhead = true;

        private long HeldCount => _readerOf.Count;

        /// <summary>Takes a message off the queue for good, on the channel that got it.</summary>
        public async Task AckAsync(BasicGetResult message, CancellationToken token)
        {
            var reader = _readerOf[message];
            try
            {
                await reader.BasicAckAsync(message.DeliveryTag, multiple: false, token);
            }
            catch
            {
                _failed = true;
                throw;
            }

            _readerOf.Remove(message);
            _held[reader].Remove(message.DeliveryTag);
        }

        /// <summary>Messages taken from the queue so far, dropped ones included.</summary>
        public long Read { get; private set; }

        public async Task<BasicGetResult?> NextAsync(long limit = long.MaxValue)
        {
            while (channel is not null && Read < limit && await GetAsync(cancellationToken) is { } message)
            {
                Read++;
                if (Parse(message).DeadAt is { } deadAt && deadAt < expiredBefore)
                {
                    await AckAsync(message, cancellationToken);
                    continue;
                }

                return message;
            }

            return null;
        }

        /// <summary>One basic.get, on a fresh channel once the current one got <see cref="GetsPerChannel"/> messages.</summary>
        private async Task<BasicGetResult?> GetAsync(CancellationToken token)
        {
            try
            {
                if (_getsOnReader == GetsPerChannel)
                {
                    var next = await connection!.CreateChannelAsync(cancellationToken: token);
                    _readers.Add(next);
                    _getsOnReader = 0;
                }

                var reader = _readers[^1];
                var message = await reader.BasicGetAsync(IoLaneTopology.ErrorQueueName, autoAck: false, token);
                if (message is null)
                {
                    _nothingReturnedAhead = true;
                    return null;
                }

                _getsOnReader++;
                _readerOf[message] = reader;
                (_held.TryGetValue(reader, out var tags) ? tags : _held[reader] = []).Add(message.DeliveryTag);
                _nothingReturnedAhead = DeliveryCount(message) == 0;
                return message;
            }
            catch
            {
                _failed = true;
                throw;
            }
        }

        /// <summary>A read failed (a stalled or gone broker): the hand-back then reads no further.</summary>
        private bool _failed;

        /// <summary>How often the error queue delivered the message before (RabbitMQ sets <c>x-delivery-count</c> on every basic.get of a quorum queue).</summary>
        private static long DeliveryCount(BasicGetResult message) =>
            message.BasicProperties.Headers?.TryGetValue("x-delivery-count", out var count) == true && count is not null
                ? Convert.ToInt64(count, CultureInfo.InvariantCulture)
                : 0;

        public async Task<BasicGetResult?> FindAsync(string id, int maxScan)
        {
            for (var i = 0; i < maxScan && await NextAsync() is { } message; i++)
            {
                if (Parse(message).Id == id)
                {
                    return message;
                }
            }

            return null;
        }

        /// <summary>
        /// The dead letters left in the queue, counted while this scan still excludes this process's other scans (a
        /// count taken after it missed what the next scan held): the ready count plus the messages this scan holds.
        /// Null when the broker did not answer within <see cref="HandBackTimeout"/>: the operation is done, so it is
        /// not turned into a 503.
        /// </summary>
        public async Task<long?> RemainingAsync()
        {
            if (channel is null)
            {
                return 0; // no error queue: nothing ever failed
            }

            using var deadline = new CancellationTokenSource(HandBackTimeout);
            return await ReadyCountAsync(Channel, deadline.Token) is { } ready ? ready + HeldCount : null;
        }

        /// <summary>The queue's ready count (the held messages not included); null when the broker did not answer.</summary>
        private static async Task<long?> ReadyCountAsync(IChannel on, CancellationToken deadline)
        {
            try
            {
                return (await WithinAsync(on.QueueDeclarePassiveAsync(IoLaneTopology.ErrorQueueName, deadline), deadline)).MessageCount;
            }
            catch (Exception ex) when (IsBrokerGone(ex))
            {
                return null;
            }
        }

        /// <summary>
        /// Before the hand-back: reads on (holding) until nothing handed back by an earlier read can be ahead of what this
        /// scan holds, so that its messages go back behind no one. Best effort within <paramref name="deadline"/> and
        /// <see cref="maxScan"/> messages; the operation's work is done, so a broker that stops answering ends it quietly.
        /// </summary>
        private async Task ReadOnAsync(CancellationToken deadline)
        {
            try
            {
                // Not WithinAsync: a get left running would add to what this scan holds while it hands back.
                for (var i = 0; i < Math.Min(maxScan, ReadOnLimit + GetsPerChannel) && !_nothingReturnedAhead; i++)
                {
                    await GetAsync(deadline);
                }
            }
            catch (Exception ex) when (IsBrokerGone(ex))
            {
                // Handed back as it is: the order may change, nothing is lost.
            }
        }

        /// <summary>
        /// Waits (best effort, within <paramref name="deadline"/>) until the queue's ready count reaches
        /// <paramref name="expected"/>: the broker takes a closed channel's messages back only once it notices the channel
        /// is gone, after the close is answered. Another API replica's scan that holds messages keeps the count lower (the
        /// wait then runs out its deadline); a dead letter coming in meanwhile can end it early.
        /// </summary>
        private static async Task<bool> AwaitReadyAsync(IChannel probe, long expected, CancellationToken deadline)
        {
            try
            {
                while ((await WithinAsync(probe.QueueDeclarePassiveAsync(IoLaneTopology.ErrorQueueName, deadline), deadline)).MessageCount < expected)
                {
                    await Task.Delay(5, deadline);
                }

                return true;
            }
            catch (Exception ex) when (IsBrokerGone(ex))
            {
                return false; // waited long enough, or the queue/broker is gone
            }
        }

        /// <summary>
        /// Stops waiting for <paramref name="call"/> at <paramref name="deadline"/> even where RabbitMQ.Client does not: a
        /// call on a channel whose earlier call timed out on a paused broker waited out the client's continuation timeout
        /// (5 s) in spite of its token. The call left behind observes its own failure.
        /// </summary>
        private static async Task<T> WithinAsync<T>(Task<T> call, CancellationToken deadline)
        {
            try
            {
                return await call.WaitAsync(deadline);
            }
            catch (OperationCanceledException) when (!call.IsCompleted)
            {
                _ = call.ContinueWith(t => t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
                throw;
            }
        }

        /// <summary>
        /// Closes the channel (which hands back what it held) and disposes it, waiting for that at most
        /// <see cref="CloseTimeout"/>; past it the close and the dispose go on without this scan. RabbitMQ.Client waits
        /// for close-ok up to its continuation timeout whatever token it is given ("try hard to close"), so a paused
        /// broker held the scan, and every io dead-letter operation queued behind it, that much longer. The close frame
        /// is sent either way: the broker hands the messages back when it processes it. True when the close was answered in time.
        /// </summary>
        public static async Task<bool> CloseAndDisposeAsync(IChannel open)
        {
            var closing = CloseAndDisposeQuietlyAsync(open);
            try
            {
                await closing.WaitAsync(CloseTimeout);
                return true;
            }
            catch (TimeoutException)
            {
                return false; // left running: it observes its own failures
            }
        }

        private static async Task CloseAndDisposeQuietlyAsync(IChannel open)
        {
            try
            {
                if (open.IsOpen) // a failed declare (the queue deleted meanwhile) closes the channel itself
                {
                    await open.CloseAsync(Constants.ReplySuccess, "scan done", abort: true, CancellationToken.None);
                }

                await open.DisposeAsync();
            }
            catch (Exception ex) when (IsBrokerGone(ex) || ex is ObjectDisposedException)
            {
                // The broker or the connection is gone: nothing is held any more.
            }
        }

        private static readonly TimeSpan CloseTimeout = TimeSpan.FromMilliseconds(500);

        private static bool IsBrokerGone(Exception ex) =>
            ex is OperationCanceledException or RabbitMQClientException or OperationInterruptedException
                or IOException or System.Net.Sockets.SocketException or TimeoutException;

        public async ValueTask DisposeAsync()
        {
            try
            {
                await HandBackAsync();
            }
            finally
            {
                scans.Release();
            }
        }

        /// <summary>
        /// Reads on if an earlier read's returns could be ahead, then closes the readers in the order they read, each once
        /// the queue holds the one before's messages again (one probe channel counts), all within <see cref="HandBackTimeout"/>
        /// for the waits (each close at most <see cref="CloseTimeout"/>). Once the broker stops answering, the rest are
        /// closed without waiting: their frames still go out in order.
        /// </summary>
        private async Task HandBackAsync()
        {
            if (channel is null)
            {
                return;
            }

            if (HeldCount == 0 || connection is not { IsOpen: true })
            {
                // Nothing held (or nothing the broker still keeps for this connection): no order to keep, so all at once,
                // one CloseTimeout in all however many readers (a paused broker answers none of them).
                await Task.WhenAll(_readers.Select(CloseAndDisposeAsync));
                return;
            }

            // Reading on costs up to the whole lane on every read once the lane has been read through (every message then
            // carries a delivery count, so no message ends the read-on early), and on a long lane it cannot reach the end
            // within HandBackTimeout anyway, when it would move everything it read behind the rest. So only short lanes
            // are read on; on a longer one a read hands back the prefix it held, in order behind earlier returns, as
            // before (race review of s12-dlorder, H1 and M1).
            if (!_failed && queueLength <= ReadOnLimit)
            {
                using var readOn = new CancellationTokenSource(HandBackTimeout);
                await ReadOnAsync(readOn.Token);
            }

            using var deadline = new CancellationTokenSource(HandBackTimeout);
            IChannel? probe = null;
            try
            {
                long? ready = null;
                // After a failed read the broker is not answering (or the connection is gone): no counting then, a paused
                // broker would hold the probe's open for the client's continuation timeout whatever its token.
                if (!_failed)
                {
                    var opening = connection.CreateChannelAsync(cancellationToken: deadline.Token);
                    try
                    {
                        probe = await WithinAsync(opening, deadline.Token);
                        ready = await ReadyCountAsync(probe, deadline.Token);
                    }
                    catch (Exception ex) when (IsBrokerGone(ex))
                    {
                        // No counting: the readers are closed in order, each close awaited, without waiting for the counts.
                        _ = opening.ContinueWith(t => CloseAndDisposeQuietlyAsync(t.Result), CancellationToken.None,
                            TaskContinuationOptions.OnlyOnRanToCompletion, TaskScheduler.Default);
                    }
                }

                var counting = ready is not null;
                var answering = true;
                var expected = ready ?? 0;
                foreach (var reader in _readers)
                {
                    var held = _held.TryGetValue(reader, out var tags) ? tags.Count : 0;
                    if (!answering)
                    {
                        _ = CloseAndDisposeQuietlyAsync(reader); // sent in order, not awaited: the broker is not answering
                        continue;
                    }

                    answering = await CloseAndDisposeAsync(reader);
                    expected += held;
                    // Each holder's messages back before the next holder closes (the last one's too, so the next scan sees them).
                    if (answering && counting && held > 0)
                    {
                        counting = await AwaitReadyAsync(probe!, expected, deadline.Token);
                    }
                }
            }
            finally
            {
                if (probe is not null)
                {
                    await CloseAndDisposeAsync(probe);
                }
            }
        }
    }
}
