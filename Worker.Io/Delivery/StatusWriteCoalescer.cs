using System.Diagnostics;
using System.Threading.Channels;
using EventPipeline.Shared;
using StackExchange.Redis;

namespace EventPipeline.Worker.Io.Delivery;

/// <summary>
/// Sends the start checks (<c>processing</c>) and success records (<c>succeeded</c>) of the events that reach them at the
/// same moment as one script call, instead of one script call each: with hundreds of deliveries in flight, many reach
/// one of these writes during any one round trip to Redis (400 noop events: 39 calls instead of 814). Each event still
/// goes through exactly the Lua functions a single write runs (<see cref="EventStatusStore.TryStartLua"/>,
/// <see cref="EventStatusStore.RecordSucceededLua"/>), each in its own <c>pcall</c>, so what one event's write may do and
/// answer is unchanged: a status never goes backwards, a success is recorded (and counted in <c>completions</c>) once, a
/// cancelled or expired event never starts, a second copy of a running event is refused. Nothing waits to fill a batch:
/// the writes that queued while the previous call was in flight form the next one, so a lone event pays no added latency.
/// A write fails no later than a single write would: it is answered within the multiplexer's async timeout of being
/// queued (however many writes wait ahead of it while Redis stalls), or fails with a <see cref="TimeoutException"/>, and
/// a write that can no longer be answered in time is not sent. Every failure a caller sees is its own exception object
/// and a <see cref="RedisException"/> or <see cref="TimeoutException"/> (a failed call, a client-side error, a write after
/// disposal), which the consumer's handling of a failed status write covers: the start check counts as "start", the
/// success is retried until written.
/// </summary>
public sealed class StatusWriteCoalescer : IAsyncDisposable, IDisposable
{
    /// <summary>Writes per script call at most: a script holds Redis while it runs, so no call grows without bound.</summary>
    public const int MaxBatch = 256;

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

    // One call in flight at a time: the writes that arrive during a call's round trip (a fraction of a millisecond on
    // loopback, more under load) form the next call, so the busier the lane, the fewer calls per write. It also keeps one
    // event's writes in order: its success is queued only after its start check was answered (by Redis, by a failure or
    // by the deadline), and when the deadline answered it while the start's call was still out, that call holds this
    // slot, so the success's call leaves only after it ended. Stalls cost no extra wait: the deadline runs from queueing.
    private readonly SemaphoreSlim _inFlight = new(1, 1);
    private readonly TimeSpan _timeout;
    private readonly Task _loop;

    // The latest deadline among the writes of the call in flight: after it, nobody waits for that call's answer.
    private long _inFlightAwaitedUntil;

    public StatusWriteCoalescer(IConnectionMultiplexer redis, EventStatusStore statuses)
    {
        _redis = redis;
        _statuses = statuses;
        // The async timeout of a single write (ConfigurationOptions.AsyncTimeout, the sync timeout, 5 s, unless set):
        // the multiplexer exposes it only through its configuration string.
        _timeout = TimeSpan.FromMilliseconds(ConfigurationOptions.Parse(redis.Configuration).AsyncTimeout);
        _loop = Task.Run(SendLoopAsync);
    }

    /// <summary>The start check of <see cref="EventStatusStore.TryStartAsync"/>, sent with whatever else is due.</summary>
    public async Task<StartDecision> TryStartAsync(string id, int attempt, string copy) =>
        (StartDecision)await Enqueue(new WriteRequest(EventStatusStore.Key(id), WriteKind.Start, attempt, copy));

    /// <summary>The success record of <see cref="EventStatusStore.MarkSucceededAsync(string, int, string)"/>: true when this call recorded it.</summary>
    public async Task<bool> MarkSucceededAsync(string id, int attempt, string result) =>
        await Enqueue(new WriteRequest(EventStatusStore.Key(id), WriteKind.Succeeded, attempt, result)) == 1;

    private async Task<long> Enqueue(WriteRequest request)
    {
        var write = new Write(request, Stopwatch.GetTimestamp() + (long)(_timeout.TotalSeconds * Stopwatch.Frequency));
        if (!_queue.Writer.TryWrite(write))
        {
            // The worker is stopping: to its caller this is the status store being gone, which it already handles.
            throw new RedisConnectionException(ConnectionFailureType.ConnectionDisposed,
                $"Status write of {request.Key} not sent: the status write coalescer is disposed (the worker is stopping)");
        }

        try
        {
            return await write.Reply.Task.WaitAsync(_timeout);
        }
        catch (TimeoutException) when (write.Reply.TrySetCanceled())
        {
            throw NotAnsweredInTime(request);
        }
        catch (OperationCanceledException) when (write.Reply.Task.IsCanceled)
        {
            // The send loop dropped it unsent at its deadline.
            throw NotAnsweredInTime(request);
        }
    }

    private TimeoutException NotAnsweredInTime(WriteRequest request) =>
        new($"Status write of {request.Key} not answered within {_timeout.TotalMilliseconds:F0} ms of being queued: the status store is slow or unreachable");

    private async Task SendLoopAsync()
    {
        var reader = _queue.Reader;
        while (await reader.WaitToReadAsync())
        {
            if (!reader.TryPeek(out var oldest))
            {
                continue;
            }

            // Wait for the call in flight, but not past the oldest write's deadline: once that has passed, nobody waits
            // for it any more, so it is dropped instead of sent, and a stall never stacks up timeouts.
            if (!await _inFlight.WaitAsync(oldest.Remaining))
            {
                while (reader.TryPeek(out var head) && !head.Awaited)
                {
                    reader.TryRead(out _);
                    head.Reply.TrySetCanceled();
                }

                continue;
            }

            var batch = new List<Write>();
            while (batch.Count < MaxBatch && reader.TryRead(out var write))
            {
                if (write.Awaited)
                {
                    batch.Add(write);
                }
                else
                {
                    write.Reply.TrySetCanceled();
                }
            }

            if (batch.Count == 0)
            {
                _inFlight.Release();
                continue;
            }

            _inFlightAwaitedUntil = batch.Max(w => w.Deadline);
            _ = SendAsync(batch);
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
                    batch[i].Reply.TrySetException(new RedisServerException($"{error} (status write of event key {batch[i].Request.Key})"));
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
                write.Reply.TrySetException(ForCaller(ex, write.Request.Key));
            }
        }
        finally
        {
            _inFlight.Release();
        }
    }

    /// <summary>
    /// The failure of a call as one caller's own exception (one object thrown by hundreds of callers at once gets their
    /// stack traces mixed), of a type the callers' handling of a failed status write covers.
    /// </summary>
    private static Exception ForCaller(Exception cause, RedisKey key)
    {
        var message = $"Status write of {key} failed with the call that carried it: {cause.GetType().Name}: {cause.Message}";
        return cause switch
        {
            TimeoutException => new TimeoutException(message, cause),
            RedisConnectionException connection => new RedisConnectionException(connection.FailureType, message, cause),
            // The multiplexer disposed under a delivery (a shutdown outlasting the bus stop): Redis never refused the
            // write, so it is a lost connection, retried until the bus stops, never a refusal to give up on.
            ObjectDisposedException => new RedisConnectionException(ConnectionFailureType.ConnectionDisposed, message, cause),
            // Anything else, a client-side error included (a disposed multiplexer, a reply of another shape): to the
            // caller the status store did not take the write, as when Redis fails it.
            _ => new RedisException(message, cause),
        };
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

    /// <summary>
    /// Refuses new writes, sends (or, past their deadline, drops) the queued ones and waits for the last call while
    /// anyone waits for its answer: returns within about one timeout of the last write queued, every caller answered.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        _queue.Writer.TryComplete();
        await _loop;
        var now = Stopwatch.GetTimestamp();
        var awaited = now >= _inFlightAwaitedUntil ? TimeSpan.Zero : Stopwatch.GetElapsedTime(now, _inFlightAwaitedUntil);
        if (await _inFlight.WaitAsync(awaited))
        {
            _inFlight.Release();
        }
    }

    /// <summary>
    /// For a synchronous disposal of the service provider: refuses new writes; the queued ones are still sent or dropped
    /// at their deadlines in the background, so their callers are answered as with <see cref="DisposeAsync"/>.
    /// </summary>
    public void Dispose() => _queue.Writer.TryComplete();

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

    private sealed record Write(WriteRequest Request, long Deadline)
    {
        /// <summary>Time left until the caller stops waiting (<see cref="Stopwatch"/> ticks at <see cref="Deadline"/>).</summary>
        public TimeSpan Remaining
        {
            get
            {
                var now = Stopwatch.GetTimestamp();
                return now >= Deadline ? TimeSpan.Zero : Stopwatch.GetElapsedTime(now, Deadline);
            }
        }

        /// <summary>Its caller still waits for the answer: not past its deadline nor answered.</summary>
        public bool Awaited => !Reply.Task.IsCompleted && Stopwatch.GetTimestamp() < Deadline;

        // Completed from the reply's thread for up to MaxBatch callers at once: their continuations (the next HTTP call,
        // the ack) must not run inline one after another on that thread.
        public TaskCompletionSource<long> Reply { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
