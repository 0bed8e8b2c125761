using System.Threading.Channels;
using EventPipeline.Shared;
using StackExchange.Redis;

namespace EventPipeline.Worker.Io.Delivery;

/// <summary>
/// Sends the start checks (<c>processing</c>) and success records (<c>succeeded</c>) of the events that reach them at the
/// same moment as one script call, instead of one script call each: with hundreds of deliveries in flight, many reach
/// one of these writes during any one round trip to Redis (400 noop events: 39 calls instead of 800). Each event still goes through exactly the Lua functions a single write runs
/// (<see cref="EventStatusStore.TryStartLua"/>, <see cref="EventStatusStore.RecordSucceededLua"/>), each in its own
/// <c>pcall</c>, so what one event's write may do and answer is unchanged: a status never goes backwards, a success is
/// recorded (and counted in <c>completions</c>) once, a cancelled or expired event never starts, a second copy of a
/// running event is refused. One event's failure is its own; a failed call (Redis down, timeout) fails every write it
/// carried, and their callers retry as they would a single write. Nothing waits to fill a batch: the writes that
/// queued while the previous call was in flight form the next one, so a lone event pays no added latency.
/// </summary>
public sealed class StatusWriteCoalescer : IAsyncDisposable
{
    /// <summary>Writes per script call at most: a script holds Redis while it runs, so no call grows without bound.</summary>
    public const int MaxBatch = 256;

    /// <summary>
    /// Calls in flight at once. One: the writes that arrive during a call's round trip (a fraction of a millisecond on
    /// loopback, more under load) form the next call, so the busier the lane, the fewer calls per write.
    /// </summary>
    private const int MaxInFlight = 1;

    // KEYS[i] status hash of write i; ARGV[1] now (unix ms), ARGV[2] ttl (s), then per write: kind ('s' start,
    // 'd' succeeded), attempt, copy (start) or result (succeeded). Returns per write the function's answer
    // (StartDecision / 1 recorded, 0 already succeeded), or the error text of a write that failed.
    private const string Script = EventStatusStore.TryStartLua + EventStatusStore.RecordSucceededLua + """
        local out = {}
        for i = 1, #KEYS do
          local a = 3 + (i - 1) * 3
          local ok, r
          if ARGV[a] == 's' then
            ok, r = pcall(try_start, KEYS[i], ARGV[a + 1], ARGV[1], ARGV[2], ARGV[a + 2])
          else
            ok, r = pcall(record_succeeded, KEYS[i], ARGV[a + 1], ARGV[1], ARGV[a + 2], ARGV[2])
          end
          if ok then out[i] = r else out[i] = tostring(r.err or r) end
        end
        return out
        """;

    private readonly IConnectionMultiplexer _redis;
    private readonly EventStatusStore _statuses;
    private readonly Channel<Write> _queue = Channel.CreateUnbounded<Write>(new UnboundedChannelOptions { SingleReader = true });
    private readonly SemaphoreSlim _inFlight = new(MaxInFlight, MaxInFlight);
    private readonly Task _loop;

    public StatusWriteCoalescer(IConnectionMultiplexer redis, EventStatusStore statuses)
    {
        _redis = redis;
        _statuses = statuses;
        _loop = Task.Run(SendLoopAsync);
    }

    /// <summary>The start check of <see cref="EventStatusStore.TryStartAsync"/>, sent with whatever else is due.</summary>
    public async Task<StartDecision> TryStartAsync(string id, int attempt, string copy) =>
        (StartDecision)await Enqueue(new Write(new WriteRequest(EventStatusStore.Key(id), WriteKind.Start, attempt, copy)));

    /// <summary>The success record of <see cref="EventStatusStore.MarkSucceededAsync(string, int, string)"/>: true when this call recorded it.</summary>
    public async Task<bool> MarkSucceededAsync(string id, int attempt, string result) =>
        await Enqueue(new Write(new WriteRequest(EventStatusStore.Key(id), WriteKind.Succeeded, attempt, result))) == 1;

    private Task<long> Enqueue(Write write)
    {
        if (!_queue.Writer.TryWrite(write))
        {
            throw new ObjectDisposedException(nameof(StatusWriteCoalescer));
        }

        return write.Reply.Task;
    }

    private async Task SendLoopAsync()
    {
        var reader = _queue.Reader;
        while (await reader.WaitToReadAsync())
        {
            await _inFlight.WaitAsync();
            var batch = new List<Write>();
            while (batch.Count < MaxBatch && reader.TryRead(out var write))
            {
                batch.Add(write);
            }

            if (batch.Count == 0)
            {
                _inFlight.Release();
                continue;
            }

            _ = SendAsync(batch);
        }

        // Disposed: wait for the calls still out so their callers get an answer.
        for (var i = 0; i < MaxInFlight; i++)
        {
            await _inFlight.WaitAsync();
        }
    }

    private async Task SendAsync(List<Write> batch)
    {
        try
        {
            var answers = await WriteAsync(_redis.GetDatabase(), _statuses.TtlSeconds, batch.Select(w => w.Request).ToList());
            for (var i = 0; i < batch.Count; i++)
            {
                if (answers[i].Error is { } error)
                {
                    batch[i].Reply.TrySetException(new RedisServerException($"status write of event key {batch[i].Request.Key} failed: {error}"));
                }
                else
                {
                    batch[i].Reply.TrySetResult(answers[i].Value);
                }
            }
        }
        catch (Exception ex)
        {
            foreach (var write in batch)
            {
                write.Reply.TrySetException(ex);
            }
        }
        finally
        {
            _inFlight.Release();
        }
    }

    /// <summary>One script call carrying <paramref name="writes"/>; per write its function's answer or its own error.</summary>
    public static async Task<WriteAnswer[]> WriteAsync(IDatabaseAsync db, long ttlSeconds, IReadOnlyList<WriteRequest> writes)
    {
        var keys = new RedisKey[writes.Count];
        var values = new RedisValue[2 + writes.Count * 3];
        values[0] = EventStatusStore.Now;
        values[1] = ttlSeconds;
        for (var i = 0; i < writes.Count; i++)
        {
            var write = writes[i];
            keys[i] = write.Key;
            values[2 + i * 3] = write.Kind == WriteKind.Start ? "s" : "d";
            values[3 + i * 3] = write.Attempt;
            values[4 + i * 3] = write.Argument;
        }

        var reply = (RedisResult[])(await db.ScriptEvaluateAsync(Script, keys, values))!;
        var answers = new WriteAnswer[writes.Count];
        for (var i = 0; i < answers.Length; i++)
        {
            answers[i] = reply[i].Resp2Type == ResultType.Integer ? new WriteAnswer((long)reply[i], null) : new WriteAnswer(-1, reply[i].ToString());
        }

        return answers;
    }

    public async ValueTask DisposeAsync()
    {
        _queue.Writer.TryComplete();
        await _loop;
        _inFlight.Dispose();
    }

    public enum WriteKind
    {
        /// <summary><c>try_start</c>: answers a <see cref="StartDecision"/>; the argument is the message copy's id.</summary>
        Start,

        /// <summary><c>record_succeeded</c>: answers 1 when recorded, 0 when it had already succeeded; the argument is the result.</summary>
        Succeeded,
    }

    public sealed record WriteRequest(RedisKey Key, WriteKind Kind, int Attempt, string Argument);

    /// <summary>The function's answer, or the error text when this write failed (<see cref="Value"/> is then -1).</summary>
    public readonly record struct WriteAnswer(long Value, string? Error);

    private sealed record Write(WriteRequest Request)
    {
        // Completed from the reply's thread for up to MaxBatch callers at once: their continuations (the next HTTP call,
        // the ack) must not run inline one after another on that thread.
        public TaskCompletionSource<long> Reply { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
