using EventPipeline.Contracts;
using EventPipeline.ServiceDefaults;
using EventPipeline.Shared;
using RabbitMQ.Client;
using StackExchange.Redis;

namespace EventPipeline.Producer.Ingest;

/// <summary>
/// Reads each lane's backlog from its broker: Redis stream/group/pending for the CPU lane, the quorum queue and its
/// error queue for the I/O lane. Serves <c>GET /lanes</c> and, sampled in the background, the lane gauges.
/// </summary>
public sealed class LaneMonitor(IConnectionMultiplexer redis, IConfiguration configuration, ILogger<LaneMonitor> logger) : IAsyncDisposable
{
    /// <summary>A consumer idle longer than this is not counted as attached (it blocks for at most 2 s between reads).</summary>
    private static readonly TimeSpan ConsumerLiveness = TimeSpan.FromSeconds(30);
    private readonly SemaphoreSlim _rabbitGate = new(1, 1);
    private IConnection? _rabbit;

    public async Task<IReadOnlyList<LaneSnapshot>> ReadAsync(CancellationToken cancellationToken)
    {
        var cpu = ReadCpuAsync();
        var io = ReadIoAsync(cancellationToken);
        return [await cpu, await io];
    }

    private async Task<LaneSnapshot> ReadCpuAsync()
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

        var oldestAge = 0.0;
        if (pending.PendingMessageCount > 0 && TryGetTimestamp(pending.LowestPendingMessageId, out var oldest))
        {
            oldestAge = Math.Max(0, (DateTimeOffset.UtcNow - oldest).TotalSeconds);
        }

        // Workers delete an entry when they acknowledge it, so the stream holds exactly the unfinished entries.
        var inStream = await length;
        var lag = Math.Max(0, inStream - pending.PendingMessageCount);
        return new LaneSnapshot(
            Lanes.Cpu,
            Depth: inStream + await delayed,
            Lag: lag,
            Pending: pending.PendingMessageCount,
            OldestPendingAgeSeconds: oldestAge,
            DeadLetters: await dead,
            Consumers: consumers.Count(c => c.IdleTimeInMilliseconds < ConsumerLiveness.TotalMilliseconds));
    }

    private async Task<LaneSnapshot> ReadIoAsync(CancellationToken cancellationToken)
    {
        var connection = await GetRabbitAsync(cancellationToken);
        await using var channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken);
        var queue = await PassiveDeclareAsync(channel, IoLaneTopology.QueueName, cancellationToken);
        var errors = await PassiveDeclareAsync(channel, IoLaneTopology.ErrorQueueName, cancellationToken);
        // AMQP reports ready messages only; unacknowledged ones are counted by the broker's Prometheus plugin.
        return new LaneSnapshot(
            Lanes.Io,
            Depth: queue?.MessageCount ?? 0,
            Lag: queue?.MessageCount ?? 0,
            Pending: 0,
            OldestPendingAgeSeconds: 0,
            DeadLetters: errors?.MessageCount ?? 0,
            Consumers: queue?.ConsumerCount ?? 0);
    }

    private static async Task<QueueDeclareOk?> PassiveDeclareAsync(IChannel channel, string queue, CancellationToken cancellationToken)
    {
        try
        {
            return await channel.QueueDeclarePassiveAsync(queue, cancellationToken);
        }
        catch (RabbitMQ.Client.Exceptions.OperationInterruptedException)
        {
            return null; // not declared yet: the channel is closed by the broker, the caller's using disposes it
        }
    }

    private async Task<IConnection> GetRabbitAsync(CancellationToken cancellationToken)
    {
        if (_rabbit is { IsOpen: true })
        {
            return _rabbit;
        }

        await _rabbitGate.WaitAsync(cancellationToken);
        try
        {
            if (_rabbit is not { IsOpen: true })
            {
                if (_rabbit is not null)
                {
                    await _rabbit.DisposeAsync();
                }

                var factory = new ConnectionFactory
                {
                    Uri = new Uri(configuration.GetConnectionString("rabbitmq") ?? throw new InvalidOperationException("ConnectionStrings:rabbitmq is not set")),
                    ClientProvidedName = "producer-api-lane-monitor",
                    RequestedConnectionTimeout = TimeSpan.FromSeconds(3),
                };
                _rabbit = await factory.CreateConnectionAsync(cancellationToken);
                logger.LogInformation("Lane monitor connected to RabbitMQ");
            }

            return _rabbit;
        }
        finally
        {
            _rabbitGate.Release();
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

    public async ValueTask DisposeAsync()
    {
        if (_rabbit is not null)
        {
            await _rabbit.DisposeAsync();
        }
    }
}
