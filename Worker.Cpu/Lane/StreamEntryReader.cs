using System.Diagnostics;
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

    /// <summary>
    /// Lifetime of this reader's wake-up stream (<see cref="WakeKey"/>), renewed by a read at least every quarter of it:
    /// a worker that dies leaves its stream behind for at most this long.
    /// </summary>
    public static readonly TimeSpan WakeStreamLifetime = TimeSpan.FromMinutes(10);

    /// <summary>After Redis refused to make or renew the wake-up stream, how long the reader waits before it asks again.</summary>
    private static readonly TimeSpan WakeRetryAfterRefusal = TimeSpan.FromSeconds(30);

    // Renews the wake-up stream's lifetime, or makes it (with the lane's group on it, reading the entries added from now
    // on) if it or its group is missing; one script, so that no stream is left without a lifetime. Renewing runs no
    // command Redis refuses when out of memory (only XGROUP CREATE is one), so an existing stream outlives an OOM.
    private static readonly LuaScript EnsureWake = LuaScript.Prepare("""
        if redis.call('EXISTS', @wake) == 1 then
          for _, g in ipairs(redis.call('XINFO', 'GROUPS', @wake)) do
            for i = 1, #g, 2 do
              if g[i] == 'name' and g[i + 1] == @group then
                redis.call('PEXPIRE', @wake, @lifetime)
                return 1
              end
            end
          end
        end
        redis.call('XGROUP', 'CREATE', @wake, @group, '$', 'MKSTREAM')
        redis.call('PEXPIRE', @wake, @lifetime)
        return 2
        """);

    private string? _consumer;
    private RedisKey _wakeKey;
    private long _wakeRenewedAt; // Stopwatch timestamp of the last EnsureWake that succeeded; 0: not (any more) in place
    private long _wakeRefusedAt; // Stopwatch timestamp of the last refusal of EnsureWake; 0: none since the last success
    private Task? _waking;

    /// <summary>
    /// This reader's wake-up stream: <c>events.cpu.wake:&lt;consumer&gt;</c>, read in the same XREADGROUP as the lane, so
    /// one entry added to it (<see cref="Wake"/>) ends a blocking read at once. Redis has no way to cancel a read that
    /// is safe in every state (CLIENT UNBLOCK on a read held back by a write pause — CLIENT PAUSE WRITE, FAILOVER, a
    /// shutdown waiting for replicas — makes Redis 7.0 panic: valkey#2111, redis#14164), and neither StackExchange.Redis
    /// nor Aspire's client has one; an XADD is an ordinary write, and a read that starts after it returns at once.
    /// </summary>
    public RedisKey WakeKey => _wakeKey;

    /// <summary>
    /// One blocking read of new lane entries for <paramref name="consumer"/>. <paramref name="stopping"/> is looked at
    /// once the wake-up stream is in place and before the read is sent: a stop that came before then (when
    /// <see cref="Wake"/> may have found no stream to wake) returns no entries instead of blocking. A read once sent is
    /// never abandoned by it (what it returns is the caller's to run); <paramref name="cancellationToken"/> abandons it.
    /// </summary>
    public async Task<IReadOnlyList<LaneEntry>> ReadAsync(string consumer, int count, CancellationToken cancellationToken, CancellationToken stopping = default)
    {
        var connection = await GetConnectionAsync();
        var db = connection.GetDatabase();
        var blockMs = (long)options.Value.BlockTimeout.TotalMilliseconds;
        var wake = await EnsureWakeStreamAsync(db, consumer);
        if (stopping.IsCancellationRequested)
        {
            return [];
        }

        var reply = await (wake
            ? db.ExecuteAsync("XREADGROUP", "GROUP", CpuLaneStreams.Group, consumer, "COUNT", count, "BLOCK", blockMs,
                "STREAMS", CpuLaneStreams.Stream.ToString(), _wakeKey.ToString(), ">", ">")
            : db.ExecuteAsync("XREADGROUP", "GROUP", CpuLaneStreams.Group, consumer, "COUNT", count, "BLOCK", blockMs,
                "STREAMS", CpuLaneStreams.Stream.ToString(), ">"))
            .WaitAsync(cancellationToken);
        return Parse(reply);
    }

    /// <summary>
    /// Ends the blocking read in progress, or the next one, at once: one entry on this reader's wake-up stream, sent on
    /// the worker's shared connection (the reader's own is busy with the read). Entries that read returns are still
    /// the caller's to run. Without a wake-up stream (not made yet, or refused by Redis) the read in progress ends at its
    /// BLOCK time; one not yet sent sees the stop (<see cref="ReadAsync"/>). Never throws: it runs in a cancellation callback.
    /// </summary>
    public void Wake(IConnectionMultiplexer redis)
    {
        if (_consumer is null || Interlocked.Read(ref _wakeRenewedAt) == 0)
        {
            return;
        }

        Volatile.Write(ref _waking, WakeAsync(redis));
    }

    private async Task WakeAsync(IConnectionMultiplexer redis)
    {
        try
        {
            // NOMKSTREAM: a wake-up that comes after the stream was removed (or expired) must not make it again, lifetime-less.
            await redis.GetDatabase().ExecuteAsync("XADD", _wakeKey, "NOMKSTREAM", "MAXLEN", 1, "*", "stop", 1);
            logger.LogDebug("Woke the blocking read of {Consumer}", _consumer);
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
        {
            logger.LogWarning(ex, "Could not wake the blocking read of {Consumer}; it ends at its BLOCK time", _consumer);
        }
    }

    /// <summary>
    /// Removes the wake-up stream once reading is over (after <see cref="Wake"/> has been sent, so it cannot make the
    /// stream again). A failure leaves it to its lifetime. Never throws.
    /// </summary>
    public async Task RemoveWakeStreamAsync(IConnectionMultiplexer redis)
    {
        if (_consumer is null)
        {
            return;
        }

        Interlocked.Exchange(ref _wakeRenewedAt, 0);
        try
        {
            if (Volatile.Read(ref _waking) is { } waking)
            {
                await waking;
            }

            await redis.GetDatabase().KeyDeleteAsync(_wakeKey);
        }
        catch (Exception ex)
        {
            // Any failure, not only Redis's (a multiplexer the host disposed past its shutdown timeout): the stream is
            // only tidied away here, its lifetime ends it anyway, and the drain that runs beside this must not fail for it.
            logger.LogInformation("Could not remove wake-up stream {WakeKey} ({Error}); it expires within {Lifetime}", _wakeKey.ToString(), ex.Message, WakeStreamLifetime);
        }
    }

    /// <summary>The wake-up stream went missing (deleted, expired, Redis lost its data): make it again before the next read.</summary>
    public void ForgetWakeStream()
    {
        Interlocked.Exchange(ref _wakeRenewedAt, 0);
        Interlocked.Exchange(ref _wakeRefusedAt, 0);
    }

    /// <summary>Whether a Redis error reply is about this reader's wake-up stream (NOGROUP names the key it missed).</summary>
    public bool IsAboutWakeStream(RedisServerException error) =>
        _consumer is not null && error.Message.Contains(_wakeKey.ToString(), StringComparison.Ordinal);

    private async Task<bool> EnsureWakeStreamAsync(IDatabase db, string consumer)
    {
        if (_consumer != consumer)
        {
            _wakeKey = $"{CpuLaneStreams.Stream}.wake:{consumer}";
            _consumer = consumer;
            ForgetWakeStream();
        }

        var renewed = Interlocked.Read(ref _wakeRenewedAt);
        if (renewed != 0 && Stopwatch.GetElapsedTime(renewed) < WakeStreamLifetime / 4)
        {
            return true;
        }

        // A stream renewed before still exists until its lifetime runs out (with a read's time to spare); past that a
        // read naming it would fail (NOGROUP).
        var stillThere = renewed != 0 && Stopwatch.GetElapsedTime(renewed) < WakeStreamLifetime - 2 * options.Value.BlockTimeout - TimeoutBeyondBlock;
        var refused = Interlocked.Read(ref _wakeRefusedAt);
        if (refused != 0 && Stopwatch.GetElapsedTime(refused) < WakeRetryAfterRefusal)
        {
            return stillThere;
        }

        try
        {
            var made = (int)await db.ScriptEvaluateAsync(EnsureWake, new { wake = _wakeKey, group = CpuLaneStreams.Group, lifetime = (long)WakeStreamLifetime.TotalMilliseconds });
            Interlocked.Exchange(ref _wakeRenewedAt, Stopwatch.GetTimestamp());
            if (Interlocked.Exchange(ref _wakeRefusedAt, 0) != 0 || made == 2)
            {
                logger.LogInformation("Wake-up stream {WakeKey} in place", _wakeKey.ToString());
            }

            return true;
        }
        catch (RedisServerException ex) when (!RedisFailures.IsOutage(ex) || IsWriteRefusal(ex))
        {
            // Redis refused it (out of memory or a full disk; an ACL, a key of another type): read the lane alone; a stop
            // then waits for the read's BLOCK time. Asked again after WakeRetryAfterRefusal. An outage reply (a replica
            // not yet promoted, LOADING, BUSY) goes to the read loop's backoff like any other outage. Only a refused
            // write leaves an existing stream as it was; after any other refusal the stream is not named in reads (a
            // key of another type there would fail every read of the lane).
            if (Interlocked.Exchange(ref _wakeRefusedAt, Stopwatch.GetTimestamp()) == 0)
            {
                logger.LogWarning("Could not make or renew wake-up stream {WakeKey} ({Error}); reading without it until Redis allows it", _wakeKey.ToString(), ex.Message);
            }

            if (!IsWriteRefusal(ex))
            {
                Interlocked.Exchange(ref _wakeRenewedAt, 0);
                return false;
            }

            return stillThere;
        }
    }

    private static bool IsWriteRefusal(RedisServerException error) =>
        error.Message.StartsWith("OOM", StringComparison.Ordinal) || error.Message.StartsWith("MISCONF", StringComparison.Ordinal);

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
            if ((string?)parts[0] != CpuLaneStreams.Stream.ToString())
            {
                continue; // the wake-up stream: its entry only ended the read
            }

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
        // make it a map and stop the lane (review of s11-carried, M1). Nothing else runs on this connection but the
        // wake-up stream's script (an integer reply).
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
