using System.Diagnostics;
using System.Globalization;
using System.Threading.Channels;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// The lane's status writes in batches, one script per batch and one batch in flight at a time: the starts handlers
/// asked for (<see cref="StartAsync"/>: each entry checked and charged exactly as a start of its own would be — still
/// pending to this consumer, its event allowed to start — at the moment its handler takes it up) and the successes
/// that finished (<see cref="SucceededAsync"/>: each status written, then exactly the entries whose status now reads
/// <c>succeeded</c> and which this consumer still holds acknowledged, one XACK, HDEL and XDEL for all). A batch grows
/// by itself under load and is a single write when the lane is quiet. While entries charged before this batch are
/// still waiting for a core (<c>lingerWhile</c>), nothing in the batch can make a core busier, so the batch waits up
/// to <see cref="CpuLaneOptions.WriteLinger"/> for more: with long jobs (PBKDF2) completions are otherwise written one
/// round trip each. Never acknowledges before the work finished; an entry whose write failed stays pending.
/// </summary>
public sealed class LaneWriter(
    IConnectionMultiplexer redis,
    EventStatusStore statuses,
    LaneBuffer buffer,
    IOptions<CpuLaneOptions> options,
    ILogger<LaneWriter> logger)
{
    // KEYS[1] stream, KEYS[2] started-runs hash, then the status hash of each success, then of each start; ARGV[1]
    // group, ARGV[2] consumer, ARGV[3] now (unix ms), ARGV[4] status ttl (s), ARGV[5] number of successes, then entry
    // id, attempt, result of each success, then entry id, attempt of each start, then the lowest and the highest of
    // those entry ids. Returns five arrays: per success
    // recorded (1 recorded here, 0 already succeeded, -1 the write failed), acknowledged (1/0) and the write's error
    // ('' when none); per start the EntryOwnership.Start (-1 when its write failed) and the error.
    private const string Script = EventStatusStore.RecordSucceededLua + EventStatusStore.TryStartLua + """
        local successes = tonumber(ARGV[5])
        -- Which of the batch's entries are pending to this consumer: one XPENDING over the batch's range instead of
        -- one per entry. Nothing below changes the pending list before the last success check (XACK comes after
        -- them), so each success reads what its own XPENDING would. A start reads the list from before the XACK: only
        -- when one entry is in the lane twice (taken back by the claimer after a long stall) and one copy's success
        -- shares the script with the other's start does that start then answer "already succeeded" where a read
        -- after the XACK said "claimed by another"; neither writes anything (review of session 8, F2).
        -- The range also covers whatever else this consumer holds between the batch's ids (read ahead, started, queued
        -- successes: about 3 x MaxStarted, so 800 rows on 32 cores), so the read is capped at 4 rows per entry of the
        -- batch, and 64 at least (what a 2-core consumer holds: small batches stay one read): a script costs what its
        -- batch is, not what the consumer holds. When the page is full, each id of the batch not on it is asked for by
        -- itself (review of session 8, F1).
        local held = {}
        local entries = #KEYS - 2
        local limit = math.min(512, math.max(64, 4 * entries))
        local page = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[#ARGV - 1], ARGV[#ARGV], limit, ARGV[2])
        for i = 1, #page do held[page[i][1]] = true end
        if #page >= limit then
          local function check(id)
            if not held[id] and #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) > 0 then held[id] = true end
          end
          for n = 1, successes do check(ARGV[6 + (n - 1) * 3]) end
          for n = 1, entries - successes do check(ARGV[6 + successes * 3 + (n - 1) * 2]) end
        end
        local recorded, acked, errors, done = {}, {}, {}, {}
        for n = 1, successes do
          local key = KEYS[2 + n]
          local a = 6 + (n - 1) * 3
          local id = ARGV[a]
          local ok, r = pcall(record_succeeded, key, ARGV[a + 1], ARGV[3], ARGV[a + 2], ARGV[4])
          local succeeded = ok
          if ok then
            recorded[n], errors[n] = r, ''
          else
            recorded[n], errors[n] = -1, type(r) == 'table' and (r.err or 'error') or tostring(r)
            -- Part of the write may have landed: what counts is whether the status reads succeeded now.
            succeeded = redis.pcall('HGET', key, 'state') == 'succeeded'
          end
          if succeeded and held[id] then
            done[#done + 1] = id
            acked[n] = 1
          else
            acked[n] = 0
          end
        end
        if #done > 0 then
          redis.call('XACK', KEYS[1], ARGV[1], unpack(done))
          redis.call('HDEL', KEYS[2], unpack(done))
          redis.call('XDEL', KEYS[1], unpack(done))
        end
        local function start_one(key, id, attempt)
          if not held[id] then return 1 end
          local decision = try_start(key, attempt, ARGV[3], ARGV[4], '')
          if decision == 1 then
            redis.call('HINCRBY', KEYS[2], id, 1)
            return 0
          end
          if decision == 0 then return 2 end
          if decision == 2 then return 3 end
          return 4
        end
        local starts, startErrors = {}, {}
        local first = 6 + successes * 3
        for n = 1, #KEYS - 2 - successes do
          local a = first + (n - 1) * 2
          -- One entry's failed write (a wrong-type key, Redis out of memory) fails that entry's start only.
          local ok, r = pcall(start_one, KEYS[2 + successes + n], ARGV[a], ARGV[a + 1])
          if ok then
            starts[n], startErrors[n] = r, ''
          else
            starts[n], startErrors[n] = -1, type(r) == 'table' and (r.err or 'error') or tostring(r)
          end
        end
        return { recorded, acked, errors, starts, startErrors }
        """;

    private readonly Channel<Write> _pending = Channel.CreateBounded<Write>(new BoundedChannelOptions(options.Value.AckBatchSize * 4 + options.Value.BufferCapacity)
    {
        SingleReader = true,
        FullMode = BoundedChannelFullMode.Wait,
    });

    // Set once the drain timed out: starts not yet sent are answered null, never written.
    private volatile bool _startsStopped;

    // Guarded by itself: the wait of a lingering batch, cut short when nothing charged waits for a core any more.
    private readonly Lock _lingerLock = new();
    private CancellationTokenSource? _lingering;

    /// <summary>
    /// Charges <paramref name="entry"/> a run and marks its event <c>processing</c> (see <see cref="EntryOwnership"/>)
    /// in the next batch; the task ends with what the script found, or null when starts were stopped
    /// (<see cref="StopStarting"/>) before it was sent: nothing was written, the entry stays pending. A Redis error is
    /// thrown (the entry stays pending).
    /// </summary>
    public async Task<EntryOwnership.Start?> StartAsync(LaneEntry entry)
    {
        if (_startsStopped)
        {
            return null;
        }

        var start = new Start(entry, new TaskCompletionSource<EntryOwnership.Start?>(TaskCreationOptions.RunContinuationsAsynchronously));
        await _pending.Writer.WriteAsync(start);
        return await start.Done.Task;
    }

    /// <summary>
    /// The drain timed out: no start is sent any more, those still queued are answered null. Once the write in flight
    /// (if any) is answered, every start that will ever be written here has been answered, so a take-back after that
    /// sees every charge (<see cref="ComputeSlots.TakeBackUnstartedAsync"/>).
    /// </summary>
    public void StopStarting() => _startsStopped = true;

    /// <summary>
    /// Nothing charged waits for a core any more: a batch lingering for company is written now, since a core that comes
    /// free would otherwise idle until the linger ends (a failed job frees its core without a write that would wake it).
    /// </summary>
    public void NothingWaitsForCore()
    {
        lock (_lingerLock)
        {
            _lingering?.Cancel();
        }
    }

    /// <summary>Queues a success; the task ends when it is recorded (true) or found already recorded (false).</summary>
    /// <remarks>Waits while too many writes are queued, so a slow Redis slows the handlers instead of filling memory.</remarks>
    public async Task<bool> SucceededAsync(LaneEntry entry, string result)
    {
        var success = new Success(entry, result, new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously));
        await _pending.Writer.WriteAsync(success);
        return await success.Done.Task;
    }

    /// <summary>
    /// Writes batches until <see cref="Complete"/> was called and every queued write is written. While
    /// <paramref name="lingerWhile"/> holds (entries already charged are waiting for a core), a batch waits up to
    /// <see cref="CpuLaneOptions.WriteLinger"/> for more writes to join it.
    /// </summary>
    public async Task RunAsync(Func<bool> lingerWhile)
    {
        var maxSuccesses = options.Value.AckBatchSize;
        var maxStarts = options.Value.BufferCapacity;
        var linger = options.Value.WriteLinger;
        var successes = new List<Success>(maxSuccesses);
        var starts = new List<Start>(maxStarts);
        while (await _pending.Reader.WaitToReadAsync())
        {
            successes.Clear();
            starts.Clear();
            Take(successes, starts, maxSuccesses, maxStarts);
            if (linger > TimeSpan.Zero && lingerWhile())
            {
                var deadline = Stopwatch.GetTimestamp() + (long)(linger.TotalSeconds * Stopwatch.Frequency);
                while (successes.Count < maxSuccesses && starts.Count < maxStarts && lingerWhile())
                {
                    var left = Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), deadline);
                    if (left <= TimeSpan.Zero || !await MoreWithinAsync(left, lingerWhile))
                    {
                        break;
                    }

                    Take(successes, starts, maxSuccesses, maxStarts);
                }
            }

            try
            {
                await WriteAsync(successes, starts);
            }
            catch (Exception ex)
            {
                // Never ends the loop: later writes and the callers still waiting would wait forever, and the heartbeat
                // would keep their entries from every other consumer.
                logger.LogError(ex, "A lane write of {Successes} successes and {Starts} starts failed unexpectedly; their entries stay pending", successes.Count, starts.Count);
                Fail(successes, starts, ex);
            }
        }
    }

    /// <summary>No more writes will be queued (the handlers have finished, or the drain timed out and nothing starts).</summary>
    public void Complete() => _pending.Writer.TryComplete();

    private void Take(List<Success> successes, List<Start> starts, int maxSuccesses, int maxStarts)
    {
        // Stops at the first write that does not fit: it opens the next batch.
        while (_pending.Reader.TryPeek(out var next)
            && (next is Success ? successes.Count < maxSuccesses : starts.Count < maxStarts)
            && _pending.Reader.TryRead(out next))
        {
            if (next is Success success)
            {
                successes.Add(success);
            }
            else
            {
                starts.Add((Start)next);
            }
        }
    }

    private async Task<bool> MoreWithinAsync(TimeSpan left, Func<bool> lingerWhile)
    {
        using var timeout = new CancellationTokenSource(left);
        lock (_lingerLock)
        {
            _lingering = timeout;
        }

        try
        {
            // Checked again once NothingWaitsForCore can cut the wait short: a core taken just before is not missed.
            return lingerWhile() && await _pending.Reader.WaitToReadAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            return false;
        }
        finally
        {
            lock (_lingerLock)
            {
                _lingering = null;
            }
        }
    }

    private async Task WriteAsync(List<Success> successes, List<Start> starts)
    {
        if (_startsStopped && starts.Count > 0)
        {
            // The drain timed out while these waited to be sent: none is charged, their entries stay pending.
            foreach (var start in starts)
            {
                start.Done.TrySetResult(null);
            }

            starts.Clear();
            if (successes.Count == 0)
            {
                return;
            }
        }

        if (successes.Count + starts.Count == 0)
        {
            return;
        }

        var keys = new RedisKey[2 + successes.Count + starts.Count];
        var values = new RedisValue[5 + successes.Count * 3 + starts.Count * 2 + 2];
        keys[0] = CpuLaneStreams.Stream;
        keys[1] = CpuLaneStreams.Started;
        values[0] = CpuLaneStreams.Group;
        values[1] = buffer.ConsumerName;
        values[2] = EventStatusStore.Now;
        values[3] = statuses.TtlSeconds;
        values[4] = successes.Count;
        var k = 2;
        var v = 5;
        foreach (var success in successes)
        {
            keys[k++] = EventStatusStore.Key(success.Entry.Id);
            values[v++] = success.Entry.EntryId;
            values[v++] = success.Entry.Attempt;
            values[v++] = success.Result;
        }

        foreach (var start in starts)
        {
            keys[k++] = EventStatusStore.Key(start.Entry.Id);
            values[v++] = start.Entry.EntryId;
            values[v++] = start.Entry.Attempt;
        }

        (values[v], values[v + 1]) = IdRange(successes, starts);

        RedisResult reply;
        try
        {
            reply = await redis.GetDatabase().ScriptEvaluateAsync(Script, keys, values);
        }
        catch (Exception ex)
        {
            // Nothing of the batch is known to have been written: each entry stays pending and its handler reports it.
            Fail(successes, starts, ex);
            return;
        }

        try
        {
            Answer(successes, starts, reply);
        }
        catch (Exception ex) when (ex is InvalidCastException or IndexOutOfRangeException or ArgumentException or NullReferenceException or FormatException or OverflowException)
        {
            // A reply of another shape than the script's: what landed is unknown, so the callers not yet answered are
            // failed like a Redis error (their entries stay pending and run again; a success already recorded is
            // found recorded then).
            Fail(successes, starts, new RedisException($"Unexpected reply to the lane write: {reply}", ex));
        }
    }

    /// <summary>The lowest and the highest stream id of the batch (ids compare as their two numbers, not as text).</summary>
    private static (RedisValue Low, RedisValue High) IdRange(List<Success> successes, List<Start> starts)
    {
        (ulong, ulong, RedisValue)? low = null, high = null;
        foreach (var entry in successes.Select(s => s.Entry).Concat(starts.Select(s => s.Entry)))
        {
            if (ParseId(entry.EntryId) is not { } id)
            {
                return ("-", "+"); // not a stream id: the consumer's whole pending list then
            }

            if (low is null || Less(id, low.Value))
            {
                low = id;
            }

            if (high is null || Less(high.Value, id))
            {
                high = id;
            }
        }

        return (low!.Value.Item3, high!.Value.Item3);

        static bool Less((ulong Ms, ulong Seq, RedisValue) a, (ulong Ms, ulong Seq, RedisValue) b) =>
            a.Ms < b.Ms || (a.Ms == b.Ms && a.Seq < b.Seq);

        static (ulong, ulong, RedisValue)? ParseId(RedisValue id)
        {
            var text = id.ToString();
            var dash = text.IndexOf('-', StringComparison.Ordinal);
            return dash > 0
                   && ulong.TryParse(text.AsSpan(0, dash), NumberStyles.None, CultureInfo.InvariantCulture, out var ms)
                   && ulong.TryParse(text.AsSpan(dash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var seq)
                ? (ms, seq, id)
                : null;
        }
    }

    private static void Fail(List<Success> successes, List<Start> starts, Exception ex)
    {
        // TrySet: callers already answered from the reply keep their answer.
        foreach (var success in successes)
        {
            success.Done.TrySetException(ex);
        }

        foreach (var start in starts)
        {
            start.Done.TrySetException(ex);
        }
    }

    private void Answer(List<Success> successes, List<Start> starts, RedisResult result)
    {
        var reply = (RedisResult[])result!;
        var recorded = (RedisResult[])reply[0]!;
        var acked = (RedisResult[])reply[1]!;
        var errors = (RedisResult[])reply[2]!;
        for (var i = 0; i < successes.Count; i++)
        {
            var entry = successes[i].Entry;
            var error = errors[i].ToString();
            var acknowledged = (int)acked[i] == 1;
            if (!string.IsNullOrEmpty(error) && !acknowledged)
            {
                // The entry stays pending and runs again; its handler reports the error.
                successes[i].Done.TrySetException(new RedisServerException(error));
                continue;
            }

            if (!acknowledged)
            {
                // The status reads succeeded (else the error above), so the entry is another consumer's.
                logger.LogWarning("Event {EventId} (entry {EntryId}) succeeded here, but another consumer claimed it meanwhile; its acknowledgement is left to that consumer",
                    entry.Id, entry.EntryId);
            }

            successes[i].Done.TrySetResult((int)recorded[i] == 1);
        }

        var decisions = (RedisResult[])reply[3]!;
        var startErrors = (RedisResult[])reply[4]!;
        for (var i = 0; i < starts.Count; i++)
        {
            var code = (int)decisions[i];
            if (code < 0)
            {
                // Its handler reports it; the entry stays pending. The rest of the batch is not held back.
                starts[i].Done.TrySetException(new RedisServerException(startErrors[i].ToString()));
            }
            else
            {
                starts[i].Done.TrySetResult((EntryOwnership.Start)code);
            }
        }
    }

    private abstract record Write(LaneEntry Entry);

    private sealed record Success(LaneEntry Entry, string Result, TaskCompletionSource<bool> Done) : Write(Entry);

    private sealed record Start(LaneEntry Entry, TaskCompletionSource<EntryOwnership.Start?> Done) : Write(Entry);
}
