using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// Reads new entries for this consumer with a blocking XREADGROUP on a connection of its own: StackExchange.Redis
/// multiplexes one socket, so a blocking command there would stall every other command. Blocking keeps idle CPU near
/// zero and picks an entry up as soon as it is added.
/// <para>
/// Its settings are those of the worker's shared connection (<paramref name="redis"/>, the options Aspire's
/// <c>AddRedisClient("redis")</c> builds: <c>ConnectionStrings:redis</c>, else <c>Aspire:StackExchange:Redis:ConnectionString</c>,
/// with <c>Aspire:StackExchange:Redis:ConfigurationOptions</c> applied). It read <c>ConnectionStrings:redis</c> alone: with
/// Redis set only in Aspire's section the worker ran and took no entry, and settings given there (a password, a
/// Sentinel service name) were missing from its reads.
/// </para>
/// </summary>
public sealed class StreamEntryReader(IOptions<ConfigurationOptions> redis, IOptions<CpuLaneOptions> options, ILogger<StreamEntryReader> logger) : IAsyncDisposable
{
    /// <summary>How long past its BLOCK time the reader's connection waits for a read (then Redis is gone); the host's
    /// shutdown timeout counts it, since the last read cannot be cancelled.</summary>
    public static readonly TimeSpan TimeoutBeyondBlock = TimeSpan.FromSeconds(5);

    /// <summary>
    /// The reader connection's heartbeat, which notices a read past its timeout and reconnects after a failure. Each
    /// heartbeat wakes a thread-pool thread, which then spins before it sleeps again: at StackExchange.Redis's 1 s
    /// default that was a large share of the idle worker's CPU (docs/operations.md, "Idle CPU"). This connection runs
    /// nothing but the blocking read, whose timeout is already seconds long, so it heartbeats less often; the host's
    /// shutdown timeout counts one heartbeat of it.
    /// </summary>
    public static readonly TimeSpan Heartbeat = TimeSpan.FromSeconds(5);

    private OwnRedisConnection? _blocking;
    private bool _disposed;

    public async Task<IReadOnlyList<LaneEntry>> ReadAsync(string consumer, int count, CancellationToken cancellationToken)
    {
        var connection = await GetConnectionAsync();
        var blockMs = (long)options.Value.BlockTimeout.TotalMilliseconds;
        var reply = await connection.GetDatabase().ExecuteAsync("XREADGROUP",
            "GROUP", CpuLaneStreams.Group, consumer, "COUNT", count, "BLOCK", blockMs, "STREAMS", CpuLaneStreams.Stream.ToString(), ">")
            .WaitAsync(cancellationToken);
        return Parse(reply);
    }

    private static volatile bool s_groupEnsured;

    /// <summary>Creates the consumer group (and the stream) unless this process already did.</summary>
    public static async Task EnsureGroupOnceAsync(IDatabase db)
    {
        if (!s_groupEnsured)
        {
            await EnsureGroupAsync(db);
            s_groupEnsured = true;
        }
    }

    /// <summary>The group vanished (Redis restarted without its data): create it again on the next read.</summary>
    public static void ForgetGroup() => s_groupEnsured = false;

    /// <summary>Creates the consumer group (and the stream) if missing; harmless when both exist.</summary>
    public static async Task EnsureGroupAsync(IDatabase db)
    {
        try
        {
            await db.StreamCreateConsumerGroupAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, StreamPosition.Beginning, createStream: true);
        }
        catch (RedisServerException ex) when (ex.Message.Contains("BUSYGROUP", StringComparison.Ordinal))
        {
        }
    }

    private static List<LaneEntry> Parse(RedisResult reply)
    {
        var entries = new List<LaneEntry>();
        if (reply.IsNull || reply.Resp2Type != ResultType.Array)
        {
            return entries; // BLOCK timed out with nothing new
        }

        foreach (var stream in (RedisResult[])reply!)
        {
            var parts = (RedisResult[])stream!;
            foreach (var item in (RedisResult[])parts[1]!)
            {
                var pair = (RedisResult[])item!;
                var values = (RedisResult[])pair[1]!;
                var fields = new Dictionary<string, string>(values.Length / 2);
                for (var i = 0; i + 1 < values.Length; i += 2)
                {
                    fields[values[i].ToString()!] = values[i + 1].ToString()!;
                }

                entries.Add(LaneEntry.Parse((RedisValue)pair[0], fields));
            }
        }

        return entries;
    }

    private async Task<ConnectionMultiplexer> GetConnectionAsync()
    {
        // One lane loop reads; the host disposes the reader at its end, when a loop past the shutdown timeout may still
        // read: it must not open a connection that nothing disposes any more.
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed), this);
        if (Volatile.Read(ref _blocking) is { } connected)
        {
            return connected.Connection;
        }

        var config = redis.Value.Clone();
        if (config.EndPoints.Count == 0)
        {
            throw new InvalidOperationException("No Redis endpoint: set ConnectionStrings:redis or Aspire:StackExchange:Redis:ConnectionString");
        }

        config.AbortOnConnectFail = false;
        config.ClientName = "worker-cpu-reader";
        // Parse reads XREADGROUP's RESP2 reply (arrays); a Protocol=Resp3 given for the worker's other connection would
        // make it a map and stop the lane (review of s11-carried, M1). Nothing else runs on this connection.
        config.Protocol = RedisProtocol.Resp2;
        // The blocking read must outlast its BLOCK time; anything longer than that means Redis is gone.
        config.AsyncTimeout = (int)(options.Value.BlockTimeout + TimeoutBeyondBlock).TotalMilliseconds;
        config.SyncTimeout = config.AsyncTimeout;
        config.HeartbeatInterval = Heartbeat;
        // Made again by the next read after a failed connect: under Sentinel that left the client's Sentinel connection
        // open each time (OwnRedisConnection).
        var made = await OwnRedisConnection.ConnectAsync(config);
        lock (_gate)
        {
            if (!_disposed)
            {
                _blocking = made;
                made = null;
            }
        }

        if (made is not null)
        {
            // Disposed while this connect ran.
            await made.DisposeAsync();
            throw new ObjectDisposedException(nameof(StreamEntryReader));
        }

        logger.LogInformation("Blocking reader connected to Redis");
        return _blocking!.Connection;
    }

    private readonly Lock _gate = new();

    public async ValueTask DisposeAsync()
    {
        OwnRedisConnection? blocking;
        lock (_gate)
        {
            _disposed = true;
            (blocking, _blocking) = (_blocking, null);
        }

        if (blocking is not null)
        {
            await blocking.Connection.CloseAsync();
            await blocking.DisposeAsync();
        }
    }
}
