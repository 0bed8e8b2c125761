using EventPipeline.Contracts;
using EventPipeline.Shared;
using RabbitMQ.Client;
using StackExchange.Redis;

namespace EventPipeline.Producer.Monitoring;

public sealed class LaneMonitorOptions
{
    /// <summary>Base URL of RabbitMQ's Prometheus plugin (e.g. http://127.0.0.1:15692); without it the I/O lane's pending count is unknown.</summary>
    public Uri? RabbitMqPrometheusUrl { get; set; }

    /// <summary>How often the backlog is read in the background (backpressure uses the latest reading).</summary>
    public TimeSpan SampleInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>How long one reading of one lane may take before it counts as unavailable.</summary>
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(3);
}

/// <summary>
/// A lane's backlog. A value the broker cannot tell is null, never a made-up zero: RabbitMQ reports no age of its
/// oldest unacknowledged message, and unacknowledged counts only through its Prometheus plugin.
/// </summary>
public sealed record LaneState(string Lane, long Depth, long Lag, long? Pending, long? OldestPendingAgeMs, long DeadLetters, long Consumers);

/// <summary>The lane's broker could not be read within the timeout.</summary>
public sealed class LaneUnavailableException(string lane, Exception inner) : Exception($"The {lane} lane's broker could not be read: {inner.Message}", inner)
{
    public string Lane { get; } = lane;
}

/// <summary>
/// Reads each lane's backlog from its broker: Redis stream/group/pending for the CPU lane, the quorum queue, its error
/// queue and RabbitMQ's Prometheus plugin for the I/O lane. Serves <c>GET /lanes</c> and <see cref="LaneSampler"/>.
/// </summary>
public sealed class LaneMonitor(
    IConnectionMultiplexer redis,
    LazyRabbitMqConnection rabbit,
    RabbitMqQueueMetrics queueMetrics,
    Microsoft.Extensions.Options.IOptions<LaneMonitorOptions> options)
{
    /// <summary>A consumer idle longer than this is not counted as attached (it blocks for at most CpuLane:BlockTimeout, 8 s by default, between reads).</summary>
    private static readonly TimeSpan ConsumerLiveness = TimeSpan.FromSeconds(30);

    public async Task<IReadOnlyList<LaneState>> ReadAsync(CancellationToken cancellationToken)
    {
        var cpu = ReadAsync(Lanes.Cpu, cancellationToken);
        var io = ReadAsync(Lanes.Io, cancellationToken);
        return [await cpu, await io];
    }

    /// <exception cref="LaneUnavailableException">the lane's broker did not answer in time.</exception>
    public async Task<LaneState> ReadAsync(string lane, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.Value.Timeout);
        try
        {
            return lane == Lanes.Cpu
                ? await ReadCpuAsync().WaitAsync(timeout.Token)
                : await ReadIoAsync(timeout.Token).WaitAsync(timeout.Token);
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex) || ex is RabbitMQ.Client.Exceptions.RabbitMQClientException
                                       or System.Net.Sockets.SocketException or IOException
                                   || (ex is OperationCanceledException && !cancellationToken.IsCancellationRequested))
        {
            throw new LaneUnavailableException(lane, ex);
        }
    }

    private async Task<LaneState> ReadCpuAsync()
    {
        var db = redis.GetDatabase();
        var length = db.StreamLengthAsync(CpuLaneStreams.Stream);
        var delayed = db.SortedSetLengthAsync(CpuLaneStreams.Delayed);
        var dead = db.StreamLengthAsync(CpuLaneStreams.DeadLetters);
        StreamPendingInfo pending = default;
        StreamConsumerInfo[] consumers = [];
        try
        {
            pending = await db.StreamPendingAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group);
            consumers = await db.StreamConsumerInfoAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group);
        }
        catch (RedisServerException ex) when (ex.Message.Contains("NOGROUP", StringComparison.Ordinal))
        {
            // No worker has created the group yet: everything in the stream is lag.
        }

        long oldestAgeMs = 0;
        if (pending.PendingMessageCount > 0 && TryGetTimestamp(pending.LowestPendingMessageId, out var oldest))
        {
            oldestAgeMs = Math.Max(0, (long)(DateTimeOffset.UtcNow - oldest).TotalMilliseconds);
        }

        // Workers delete an entry when they acknowledge it, so the stream holds exactly the unfinished entries.
        var inStream = await length;
        return new LaneState(
            Lanes.Cpu,
            Depth: inStream + await delayed,
            Lag: Math.Max(0, inStream - pending.PendingMessageCount),
            Pending: pending.PendingMessageCount,
            OldestPendingAgeMs: oldestAgeMs,
            DeadLetters: await dead,
            Consumers: consumers.Count(c => c.IdleTimeInMilliseconds < ConsumerLiveness.TotalMilliseconds));
    }

    private async Task<LaneState> ReadIoAsync(CancellationToken cancellationToken)
    {
        var connection = await rabbit.GetAsync(cancellationToken);
        // A dead-letter scan holds the messages it reads (unacknowledged) until it closes: the passive declare's ready-only
        // count dips while a list runs, the plugin's ready + unacknowledged does not (it lags its collect interval instead).
        var scrape = queueMetrics.ReadAsync([IoLaneTopology.QueueName, IoLaneTopology.ErrorQueueName], cancellationToken);
        await using var channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken);
        var queue = await PassiveDeclareAsync(channel, IoLaneTopology.QueueName, cancellationToken);
        var errors = await PassiveDeclareAsync(channel, IoLaneTopology.ErrorQueueName, cancellationToken);
        var counts = await scrape;
        var unacked = counts?[0]?.Unacknowledged;
        var ready = (long)(queue?.MessageCount ?? 0);
        return new LaneState(
            Lanes.Io,
            // Unfinished = ready + delivered-but-unacknowledged; when the plugin is unreachable only ready is known.
            Depth: ready + (unacked ?? 0),
            Lag: ready,
            Pending: unacked,
            OldestPendingAgeMs: null, // RabbitMQ keeps no delivery time of unacknowledged messages
            DeadLetters: counts?[1] is { } dead ? dead.Ready + dead.Unacknowledged : errors?.MessageCount ?? 0,
            Consumers: queue?.ConsumerCount ?? 0);
    }

    private static async Task<QueueDeclareOk?> PassiveDeclareAsync(IChannel channel, string queue, CancellationToken cancellationToken)
    {
        try
        {
            return await channel.QueueDeclarePassiveAsync(queue, cancellationToken);
        }
        catch (RabbitMQ.Client.Exceptions.OperationInterruptedException ex) when (ex.ShutdownReason?.ReplyCode == 404)
        {
            return null; // not declared yet: the broker closed this channel, the caller's using disposes it
        }
    }

    private static bool TryGetTimestamp(RedisValue entryId, out DateTimeOffset timestamp)
    {
        var text = entryId.ToString();
        var dash = text.IndexOf('-', StringComparison.Ordinal);
        if (dash > 0 && long.TryParse(text.AsSpan(0, dash), out var ms))
        {
            timestamp = DateTimeOffset.FromUnixTimeMilliseconds(ms);
            return true;
        }

        timestamp = default;
        return false;
    }
}
