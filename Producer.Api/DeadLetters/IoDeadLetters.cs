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
/// channel without acknowledging them; closing the channel hands back every message it did not acknowledge, in its
/// place. A replay first records the replay in the event's status (refused when the event already succeeded: then the
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
    /// How long a scan's hand-back may take (count, close, wait until the queue holds its messages again): a broker that
    /// does not answer holds a scan for its stalled call (the client's continuation timeout, 5 s) plus this and a 0.5 s wait for the close, ~7.5 s.
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
            attempts = headers.TryGetValue("x-delivery-count", out var count) && count is not null
                ? Convert.ToInt32(count, CultureInfo.InvariantCulture) + 1
                : null;
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
                return new QueueScan(null, null, 0, default, _scans, cancellationToken);
            }

            return new QueueScan(connection, channel, length, DateTimeOffset.UtcNow - statuses.DeadLetterRetention, _scans, cancellationToken);
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
    /// Reads the error queue on one channel without acknowledging; disposing closes the channel, which returns every
    /// message not acknowledged to the queue, waits (best effort, up to 2 s) until the queue holds them again, and then
    /// lets this process's next scan start (<paramref name="scans"/>). A dead letter older than the retention (dead before
    /// <paramref name="expiredBefore"/>) is acknowledged, i.e. dropped, when met: its status expires with it.
    /// </summary>
    private sealed class QueueScan(IConnection? connection, IChannel? channel, long queueLength, DateTimeOffset expiredBefore, SemaphoreSlim scans,
        CancellationToken cancellationToken)
        : IAsyncDisposable
    {
        public IChannel Channel => channel ?? throw new InvalidOperationException("no error queue");

        public long QueueLength => queueLength;

        private readonly SortedSet<ulong> _unacknowledged = [];

        /// <summary>Takes a message off the queue for good.</summary>
        public async Task AckAsync(BasicGetResult message, CancellationToken token)
        {
            await Channel.BasicAckAsync(message.DeliveryTag, multiple: false, token);
            _unacknowledged.Remove(message.DeliveryTag);
        }

        /// <summary>Messages taken from the queue so far, dropped ones included.</summary>
        public long Read { get; private set; }

        public async Task<BasicGetResult?> NextAsync(long limit = long.MaxValue)
        {
            while (channel is not null && Read < limit
                   && await channel.BasicGetAsync(IoLaneTopology.ErrorQueueName, autoAck: false, cancellationToken) is { } message)
            {
                Read++;
                _unacknowledged.Add(message.DeliveryTag);
                if (Parse(message).DeadAt is { } deadAt && deadAt < expiredBefore)
                {
                    await AckAsync(message, cancellationToken);
                    continue;
                }

                return message;
            }

            return null;
        }

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
            return await ExpectedAfterReturnAsync(deadline.Token);
        }

        /// <summary>
        /// The queue's ready count with this scan's held messages handed back: what it counts now (the held ones not
        /// included) plus the ones held. Measured right before the close rather than taken from the scan's start, so dead
        /// letters that came or went meanwhile do not end the wait early or hold it for its full 2 s; only one that comes
        /// in the moment of the close still can. Null when the broker did not answer (the wait is skipped).
        /// </summary>
        private async Task<long?> ExpectedAfterReturnAsync(CancellationToken deadline)
        {
            try
            {
                return (await WithinAsync(Channel.QueueDeclarePassiveAsync(IoLaneTopology.ErrorQueueName, deadline), deadline)).MessageCount
                       + _unacknowledged.Count;
            }
            catch (Exception ex) when (IsBrokerGone(ex))
            {
                return null;
            }
        }

        /// <summary>
        /// Waits (best effort, within <paramref name="deadline"/>) until the queue holds <paramref name="expected"/>
        /// messages again. A quorum queue takes a closed channel's unacknowledged messages back only once it notices the
        /// channel is gone, after the close is answered, so the next operation saw fewer dead letters, or the ones it read
        /// later. Handing them back with a nack instead is no cure: RabbitMQ 3.10's quorum queue puts a nacked message at
        /// the back, which breaks "oldest first". No other scan of this process runs meanwhile (a scan of another API
        /// replica that holds messages makes the count lower: then the wait runs out its 2 s).
        /// </summary>
        private static async Task AwaitReturnedAsync(IConnection open, long expected, CancellationToken deadline)
        {
            // Best effort: the operation's work is done (acks sent); a broker that goes away now must not turn it into
            // a 503. Bounded by the one 2 s deadline, declares included (a paused broker never answers them).
            try
            {
                await using var probe = await open.CreateChannelAsync(cancellationToken: deadline);
                while ((await probe.QueueDeclarePassiveAsync(IoLaneTopology.ErrorQueueName, deadline)).MessageCount < expected)
                {
                    await Task.Delay(5, deadline);
                }
            }
            catch (Exception ex) when (IsBrokerGone(ex))
            {
                // Waited long enough, or the queue/broker is gone: answer with what was done.
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
        /// is sent either way: the broker hands the messages back when it processes it.
        /// </summary>
        public static async Task CloseAndDisposeAsync(IChannel open)
        {
            var closing = CloseAndDisposeQuietlyAsync(open);
            try
            {
                await closing.WaitAsync(CloseTimeout);
            }
            catch (TimeoutException)
            {
                // Left running: it observes its own failures.
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
                if (channel is not null)
                {
                    using var deadline = new CancellationTokenSource(HandBackTimeout);
                    var expected = channel.IsOpen && _unacknowledged.Count > 0 && connection is not null
                        ? await ExpectedAfterReturnAsync(deadline.Token)
                        : null;
                    await CloseAndDisposeAsync(channel);
                    if (expected is { } count)
                    {
                        await AwaitReturnedAsync(connection!, count, deadline.Token);
                    }
                }
            }
            finally
            {
                scans.Release();
            }
        }
    }
}
