using System.Collections.Concurrent;
using System.Reflection;
using EventPipeline.Shared;
using EventPipeline.Worker.Cpu.Lane;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.UnitTests;

/// <summary>
/// The lane writer's own guarantees, against a Redis stand-in that answers its scripts the way the script would (or
/// not at all, or malformed): a reply it cannot read fails that batch's callers and never stops the writer; a batch
/// lingers only while charged entries wait for a core; and a drain timeout takes back every charge that never ran,
/// even one whose start was still queued (Worker.Cpu/Lane/LaneWriter.cs, ComputeSlots.cs). The broker behaviour
/// these rely on is covered by the functional tests; what is pinned here is the writer's timing and bookkeeping.
/// </summary>
public sealed class LaneWriterTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task A_malformed_reply_fails_its_batch_and_later_writes_are_still_written()
    {
        var calls = 0;
        var redis = new FakeLaneRedis((keys, values) => Interlocked.Increment(ref calls) == 1
            ? Task.FromResult(RedisResult.Create(Array.Empty<RedisResult>())) // malformed: none of the five arrays
            : Task.FromResult(FakeLaneRedis.StartedReply(keys, values)));
        var writer = Writer(redis, Options(TimeSpan.Zero));
        var running = Task.Run(() => writer.RunAsync(() => false));

        var first = writer.StartAsync(Entry("first"));
        var failure = await Record.ExceptionAsync(() => first.WaitAsync(Patience));
        Assert.True(failure is RedisException, $"the caller of a batch with a malformed reply got {failure?.GetType().Name ?? "no exception"}, not a RedisException its handler reports");

        var second = await writer.StartAsync(Entry("second")).WaitAsync(Patience);
        Assert.Equal(EntryOwnership.Start.Started, second);

        writer.Complete();
        await running.WaitAsync(Patience);
    }

    [Fact]
    public async Task A_batch_stops_lingering_when_the_last_charged_entry_takes_a_core()
    {
        var linger = TimeSpan.FromSeconds(10);
        var options = Options(linger, handlers: 1);
        var redis = new FakeLaneRedis((keys, values) => Task.FromResult(FakeLaneRedis.StartedReply(keys, values)));
        var (writer, slots) = Lane(redis, options);
        var running = Task.Run(() => writer.RunAsync(() => slots.WorkWaitingForCore));

        // A computes; X is charged and waits for the only core; B's start then waits for company while X waits.
        var a = Entry("a");
        Assert.Equal(EntryOwnership.Start.Started, await slots.ChargeAsync(a).WaitAsync(Patience));
        Assert.True(await slots.WaitForCoreAsync(a).WaitAsync(Patience));
        var x = Entry("x");
        Assert.Equal(EntryOwnership.Start.Started, await slots.ChargeAsync(x).WaitAsync(Patience));
        var xCore = slots.WaitForCoreAsync(x);
        var b = slots.ChargeAsync(Entry("b"));
        await Until(() => redis.Queued(writer) == 0 && !b.IsCompleted, "B's start to be taken into a lingering batch");

        // A fails (no success is written): X takes the core, nothing charged waits any more, so a core may idle.
        slots.Release();
        Assert.True(await xCore.WaitAsync(Patience));
        var started = System.Diagnostics.Stopwatch.StartNew();
        var written = await Record.ExceptionAsync(() => b.WaitAsync(TimeSpan.FromSeconds(3)));
        Assert.True(written is null, $"B's start was still lingering {started.Elapsed.TotalSeconds:F1} s after the last charged entry took a core (linger {linger.TotalSeconds} s): a core could sit idle");

        writer.Complete();
        await running.WaitAsync(Patience);
    }

    [Fact]
    public async Task A_drain_timeout_takes_back_every_charge_that_never_ran_even_behind_a_slow_write()
    {
        var options = Options(TimeSpan.Zero, handlers: 1);
        var stall = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var stalling = false;
        var redis = new FakeLaneRedis(async (keys, values) =>
        {
            if (Volatile.Read(ref stalling))
            {
                await stall.Task; // Redis slow at the deadline: the write in flight answers late, but answers
            }

            return FakeLaneRedis.StartedReply(keys, values);
        });
        var (writer, slots) = Lane(redis, options);
        var running = Task.Run(() => writer.RunAsync(() => slots.WorkWaitingForCore));

        var a = Entry("a");
        Assert.Equal(EntryOwnership.Start.Started, await slots.ChargeAsync(a).WaitAsync(Patience));
        Assert.True(await slots.WaitForCoreAsync(a).WaitAsync(Patience)); // A computes through the whole drain

        Volatile.Write(ref stalling, true);
        var waiting = new List<Task> { Charge(slots, Entry("x")) };
        await Until(() => redis.InFlight > 0, "X's start to be in flight");
        waiting.Add(Charge(slots, Entry("y")));
        waiting.Add(Charge(slots, Entry("z")));
        await Until(() => redis.Queued(writer) == 2, "the starts of Y and Z to be queued behind it");

        var takeBack = slots.TakeBackUnstartedAsync();
        // Redis stays slow past the old code's 2 s wait for charges on their way, then answers (a simulated duration, not a
        // wait for a condition: the take-back must not finish before the write in flight is answered).
        await Task.WhenAny(takeBack, Task.Delay(TimeSpan.FromSeconds(2.5)));
        stall.TrySetResult();
        await takeBack.WaitAsync(Patience);
        await Task.WhenAll(waiting).WaitAsync(Patience);

        writer.Complete();
        await running.WaitAsync(Patience);
        var leftCharged = redis.Charged.Except([a.EntryId.ToString()]).Order().ToArray();
        Assert.True(leftCharged.Length == 0, $"charged and marked processing but never run nor taken back: {string.Join(", ", leftCharged)} (each would be a false suspect for a whole ClaimTimeout)");
    }

    [Fact]
    public async Task A_start_waits_for_no_more_than_the_write_in_flight()
    {
        // Pickup latency: a start queued behind a slow write goes out in the very next script, alone with whatever else
        // queued meanwhile, as soon as that write is answered (no linger while nothing charged waits for a core).
        var options = Options(TimeSpan.FromSeconds(10));
        var stall = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var scripts = new ConcurrentQueue<int>();
        var redis = new FakeLaneRedis(async (keys, values) =>
        {
            scripts.Enqueue(keys.Length - 2 - (int)values[4]);
            if (scripts.Count == 1)
            {
                await stall.Task;
            }

            return FakeLaneRedis.StartedReply(keys, values);
        });
        var (writer, slots) = Lane(redis, options);
        var running = Task.Run(() => writer.RunAsync(() => slots.WorkWaitingForCore));

        var first = writer.StartAsync(Entry("first"));
        await Until(() => redis.InFlight == 1, "the first start to be in flight");
        var behind = writer.StartAsync(Entry("behind"));
        await Until(() => redis.Queued(writer) == 1, "the second start to queue behind it");

        stall.TrySetResult();
        Assert.Equal(EntryOwnership.Start.Started, await first.WaitAsync(Patience));
        var answered = System.Diagnostics.Stopwatch.StartNew();
        Assert.Equal(EntryOwnership.Start.Started, await behind.WaitAsync(Patience));
        Assert.True(answered.Elapsed < TimeSpan.FromSeconds(5), $"the start queued behind the write in flight was answered {answered.Elapsed.TotalSeconds:F1} s after it (linger 10 s): it waited for more than that write");
        Assert.Equal([1, 1], scripts.ToArray());

        writer.Complete();
        await running.WaitAsync(Patience);
    }

    [Fact]
    public async Task A_drain_timeout_waits_for_the_write_in_flight_as_long_as_the_redis_client_does()
    {
        // The Redis client gives a script 6 s (+ a 1 s heartbeat); the write in flight answers after 5 s, past the 4 s
        // the take-back used to wait, but within what the client allows: the entry it charged must be taken back.
        var leftCharged = await LeftChargedWhenTheWriteInFlightAnswersLateAsync(
            ConfigurationOptions.Parse("127.0.0.1:6379,asyncTimeout=6000"), TimeSpan.FromSeconds(5));
        Assert.True(leftCharged.Length == 0, $"a start answered 5 s after the drain timed out (the Redis client allows 7 s) left {string.Join(", ", leftCharged)} charged and never run: a false suspect");
    }

    [Fact]
    public async Task A_drain_timeout_waits_for_the_write_in_flight_as_long_as_a_heartbeat_set_in_code_lets_the_client_wait()
    {
        // The client fails a command only at the heartbeat after its async timeout. A heartbeat set in code (it has no
        // connection-string key, so the multiplexer's Configuration string never carries it) of 4 s with a 1 s timeout
        // lets the write in flight be answered up to 5 s after the deadline; Redis answers it after 3 s. The entry it
        // charged must still be taken back.
        var client = ConfigurationOptions.Parse("127.0.0.1:6379,asyncTimeout=1000");
        client.HeartbeatInterval = TimeSpan.FromSeconds(4);
        var leftCharged = await LeftChargedWhenTheWriteInFlightAnswersLateAsync(client, TimeSpan.FromSeconds(3));
        Assert.True(leftCharged.Length == 0, $"a start answered 3 s after the drain timed out (the Redis client allows 1 s + a 4 s heartbeat set in code) left {string.Join(", ", leftCharged)} charged and never run: a false suspect");
    }

    /// <summary>
    /// One entry computing, a second one's start in flight when the drain times out (no drain wait), Redis answering that
    /// start <paramref name="late"/> after the deadline: the entries left charged once everything settled.
    /// </summary>
    private static async Task<string[]> LeftChargedWhenTheWriteInFlightAnswersLateAsync(ConfigurationOptions client, TimeSpan late)
    {
        var options = Options(TimeSpan.Zero, handlers: 1);
        var stall = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var stalling = false;
        var redis = new FakeLaneRedis(async (keys, values) =>
        {
            if (Volatile.Read(ref stalling))
            {
                await stall.Task;
            }

            return FakeLaneRedis.StartedReply(keys, values);
        }, configuration: client.ToString());
        var (writer, slots) = Lane(redis, options, client);
        var running = Task.Run(() => writer.RunAsync(() => slots.WorkWaitingForCore));

        var a = Entry("a");
        Assert.Equal(EntryOwnership.Start.Started, await slots.ChargeAsync(a).WaitAsync(Patience));
        Assert.True(await slots.WaitForCoreAsync(a).WaitAsync(Patience));

        Volatile.Write(ref stalling, true);
        var x = Charge(slots, Entry("x"));
        await Until(() => redis.InFlight > 0, "X's start to be in flight");

        var takeBack = slots.TakeBackUnstartedAsync();
        // A simulated stall (not a wait for a condition): Redis answers this long after the deadline.
        await Task.WhenAny(takeBack, Task.Delay(late));
        stall.TrySetResult();
        await takeBack.WaitAsync(Patience);
        await x.WaitAsync(Patience);

        writer.Complete();
        await running.WaitAsync(Patience);
        return redis.Charged.Except([a.EntryId.ToString()]).ToArray();
    }

    [Fact]
    public void The_host_waits_after_the_drain_for_the_take_back_and_the_write_before_it()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Configuration["CpuLane:DrainTimeout"] = "00:00:25";
        builder.Configuration["CpuLane:BlockTimeout"] = "00:00:08";
        builder.Configuration["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false";
        builder.AddCpuLane();
        using var host = builder.Build();

        // The drain's clock starts when the read loop returns: its last blocking read cannot be cancelled, and while Redis
        // stalls it ends only at the reader connection's timeout (BlockTimeout + 5 s) plus a heartbeat of that connection
        // to notice (StreamEntryReader.Heartbeat, not the shared connection's). Then
        // the write in flight is answered (or failed) within the client's timeout and one heartbeat, as the worker's own
        // settings give them (Worker.Cpu's appsettings.json, copied beside this test, sets a 2 s heartbeat; the connection
        // string has no key for it); then the take-back script, the last successes and the telemetry flush.
        var client = host.Services.GetRequiredService<IOptions<ConfigurationOptions>>().Value;
        Assert.Equal(TimeSpan.FromSeconds(2), client.HeartbeatInterval);
        // The shipped timeout and heartbeat fit the margin: the take-back is not cut short by the cap.
        Assert.Equal(TimeSpan.FromMilliseconds(client.AsyncTimeout) + client.HeartbeatInterval, ComputeSlots.ChargeAnswerLimit(client, NullLogger.Instance));
        var lastRead = TimeSpan.FromSeconds(8) + StreamEntryReader.TimeoutBeyondBlock + StreamEntryReader.Heartbeat;
        var needed = lastRead + TimeSpan.FromSeconds(25) + TimeSpan.FromMilliseconds(client.AsyncTimeout) + client.HeartbeatInterval + ComputeSlots.TakeBackBudget;
        var shutdown = host.Services.GetRequiredService<IOptions<Microsoft.Extensions.Hosting.HostOptions>>().Value.ShutdownTimeout;
        Assert.True(shutdown >= needed, $"the host stops waiting {shutdown.TotalSeconds} s after SIGTERM, but a drain timeout at 25 s after a last read of up to {lastRead.TotalSeconds} s (BLOCK 8 s, Redis stalled) may need {needed.TotalSeconds} s to take back every charge");
    }

    private static async Task Until(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting for {what}");
            await Task.Delay(10);
        }
    }

    private static async Task Charge(ComputeSlots slots, LaneEntry entry)
    {
        if (await slots.ChargeAsync(entry) == EntryOwnership.Start.Started)
        {
            Assert.False(await slots.WaitForCoreAsync(entry)); // the only core is A's until after the deadline
        }
    }

    private static IOptions<CpuLaneOptions> Options(TimeSpan linger, int handlers = 2) =>
        Microsoft.Extensions.Options.Options.Create(new CpuLaneOptions { WriteLinger = linger, Handlers = handlers });

    private static LaneWriter Writer(FakeLaneRedis redis, IOptions<CpuLaneOptions> options) =>
        new(redis.Multiplexer, new EventStatusStore(redis.Multiplexer, Microsoft.Extensions.Options.Options.Create(new StatusOptions())),
            new LaneBuffer(options, new StartedBound(options, NullLogger<StartedBound>.Instance)), options, NullLogger<LaneWriter>.Instance);

    private static (LaneWriter Writer, ComputeSlots Slots) Lane(FakeLaneRedis redis, IOptions<CpuLaneOptions> options, ConfigurationOptions? client = null)
    {
        var writer = Writer(redis, options);
        client ??= ConfigurationOptions.Parse(redis.Multiplexer.Configuration);
        return (writer, new ComputeSlots(new EntryOwnership(redis.Multiplexer, new LaneBuffer(options, new StartedBound(options, NullLogger<StartedBound>.Instance))), writer, Microsoft.Extensions.Options.Options.Create(client), options, NullLogger<ComputeSlots>.Instance));
    }

    private static int _ids;

    private static LaneEntry Entry(string id) => new($"{Interlocked.Increment(ref _ids)}-0", id, "noop.cpu", "{}", DateTimeOffset.UtcNow, 1, [], "[]");
}

/// <summary>
/// Stands in for Redis behind the lane's scripts: the lane write is answered by <c>answer</c>; a take-back (the only
/// other script used here) uncharges its entries. Tracks which entries are charged, like the started-runs hash.
/// </summary>
public sealed class FakeLaneRedis
{
    private readonly Func<RedisKey[], RedisValue[], Task<RedisResult>> _answer;
    private int _inFlight;

    public FakeLaneRedis(Func<RedisKey[], RedisValue[], Task<RedisResult>> answer, string configuration = "127.0.0.1:6379")
    {
        _answer = answer;
        var db = DispatchProxy.Create<IDatabase, Proxy>();
        ((Proxy)(object)db).Handler = (method, args) => method.Name == nameof(IDatabase.ScriptEvaluateAsync) && args[0] is string script
            ? EvaluateAsync(script, (RedisKey[])args[1]!, (RedisValue[])args[2]!)
            : throw new NotSupportedException(method.Name);
        Multiplexer = DispatchProxy.Create<IConnectionMultiplexer, Proxy>();
        ((Proxy)(object)Multiplexer).Handler = (method, _) => method.Name switch
        {
            nameof(IConnectionMultiplexer.GetDatabase) => db,
            "get_" + nameof(IConnectionMultiplexer.Configuration) => configuration,
            _ => throw new NotSupportedException(method.Name),
        };
    }

    public IConnectionMultiplexer Multiplexer { get; }

    /// <summary>Entry ids charged a run and not taken back.</summary>
    public ConcurrentDictionary<string, int> ChargedRuns { get; } = new();

    public IEnumerable<string> Charged => ChargedRuns.Where(c => c.Value > 0).Select(c => c.Key);

    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>Writes queued in the writer and not yet taken into a batch.</summary>
    public int Queued(LaneWriter writer)
    {
        var channel = typeof(LaneWriter).GetField("_pending", BindingFlags.NonPublic | BindingFlags.Instance)!.GetValue(writer)!;
        var reader = channel.GetType().GetProperty("Reader")!.GetValue(channel)!;
        return (int)reader.GetType().GetProperty("Count")!.GetValue(reader)!;
    }

    /// <summary>The lane script's reply when every start in the batch started and every success was recorded.</summary>
    public static RedisResult StartedReply(RedisKey[] keys, RedisValue[] values)
    {
        var successes = (int)values[4];
        var starts = keys.Length - 2 - successes;
        RedisResult Many(int n, RedisValue value) => RedisResult.Create([.. Enumerable.Repeat(RedisResult.Create(value), n)]);
        return RedisResult.Create([Many(successes, 1), Many(successes, 1), Many(successes, ""), Many(starts, (int)EntryOwnership.Start.Started), Many(starts, "")]);
    }

    private async Task<RedisResult> EvaluateAsync(string script, RedisKey[] keys, RedisValue[] values)
    {
        if (!script.Contains("start_one", StringComparison.Ordinal))
        {
            // The take-back: one run less for each entry named.
            foreach (var id in values)
            {
                ChargedRuns.AddOrUpdate(id.ToString(), 0, (_, n) => n - 1);
            }

            return RedisResult.Create((RedisValue)values.Length);
        }

        Interlocked.Increment(ref _inFlight);
        try
        {
            var reply = await _answer(keys, values);
            var successes = (int)values[4];
            var codes = ((RedisResult[])reply!).Length == 5 ? (RedisResult[])((RedisResult[])reply!)[3]! : [];
            for (var n = 0; n < codes.Length; n++)
            {
                if ((int)codes[n] == (int)EntryOwnership.Start.Started)
                {
                    ChargedRuns.AddOrUpdate(values[5 + successes * 3 + n * 2].ToString(), 1, (_, c) => c + 1);
                }
            }

            return reply;
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
    }

    public class Proxy : DispatchProxy
    {
        public Func<MethodInfo, object?[], object?> Handler { get; set; } = null!;

        protected override object? Invoke(MethodInfo? method, object?[]? args) => Handler(method!, args ?? []);
    }
}
