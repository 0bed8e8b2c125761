// Measures the CPU lane on this machine with a real redis-server and a real Worker.Cpu process:
//   1. idle CPU of Worker.Cpu over 30 s (utime+stime from /proc/<pid>/stat),
//   2. pickup latency (acceptedAt → startedAt) of spaced single events, p50/p99,
//   3. drain time of N hash.pbkdf2 events against the same N PBKDF2 calls made directly on all cores.
// Usage: dotnet run -c Release --project tests/Worker.Cpu.Measurements -- [events=10000] [iterations=10000] [idleSeconds=30] [settleSeconds=30]
// (events=0 measures only idle CPU and pickup latency; iterations=0 drains noop.cpu events: the lane's own overhead).
// The worker inherits this process's environment, so settings given there (e.g. CpuLane__MaxStarted=32,
// CpuLane__BlockTimeout=00:00:09) reach it, to compare settings back to back.
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using EventPipeline.Contracts;
using EventPipeline.Shared;
using EventPipeline.Testing;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

var events = args.Length > 0 ? int.Parse(args[0]) : 10_000;
var iterations = args.Length > 1 ? int.Parse(args[1]) : 10_000;
var idleSeconds = args.Length > 2 ? int.Parse(args[2]) : 30;
var settleSeconds = args.Length > 3 ? int.Parse(args[3]) : 30; // JIT tiering and connection set-up finish first

Console.WriteLine($"cores {Environment.ProcessorCount}; load average at start: {File.ReadAllText("/proc/loadavg").Trim()}");
await using var redis = await RedisServer.StartAsync();
await using var connection = await redis.ConnectAsync();
var db = connection.GetDatabase();
var statuses = new EventStatusStore(connection, Options.Create(new StatusOptions()));

// ChildProcess starts the worker with this process's environment plus these (ProcessStartInfo's own copy).
var worker = ServiceProcess.Start("Worker.Cpu", new Dictionary<string, string?>
{
    ["ConnectionStrings__redis"] = redis.ConnectionString,
    ["ASPNETCORE_ENVIRONMENT"] = "Production",
    ["Logging__LogLevel__Default"] = "Warning",
}, out var port);
await using (worker)
{
    await ServiceProcess.WaitUntilReadyAsync(worker, port, TimeSpan.FromSeconds(120));

    // 1. Idle CPU: let start-up settle, then count the ticks the process used.
    await Task.Delay(TimeSpan.FromSeconds(settleSeconds));
    var (ticks0, at0) = (CpuTicks(worker.Pid), Stopwatch.GetTimestamp());
    await Task.Delay(TimeSpan.FromSeconds(idleSeconds));
    var (ticks1, elapsed) = (CpuTicks(worker.Pid), Stopwatch.GetElapsedTime(at0));
    var idleCpu = (ticks1 - ticks0) / 100.0 / elapsed.TotalSeconds; // CLK_TCK = 100 on Linux
    Console.WriteLine($"idle CPU: {ticks1 - ticks0} ticks in {elapsed.TotalSeconds:F1} s = {idleCpu * 100:F3} % of one core");

    // 2. Pickup latency: one event at a time, spaced, so each finds the reader blocked in XREADGROUP.
    var pickupIds = new List<string>();
    for (var i = 0; i < 200; i++)
    {
        var id = $"pickup-{i}-{Guid.NewGuid():N}";
        await EnqueueAsync(db, statuses, [(id, EventTypes.NoopCpu, "{}")]);
        pickupIds.Add(id);
        await Task.Delay(50);
    }

    var latencies = new List<double>();
    foreach (var id in pickupIds)
    {
        var status = await WaitFinishedAsync(statuses, id);
        latencies.Add((status.StartedAt!.Value - status.AcceptedAt!.Value).TotalMilliseconds);
    }

    latencies.Sort();
    Console.WriteLine($"pickup latency (acceptedAt → startedAt, ms resolution, n={latencies.Count}): p50 {Percentile(latencies, 50)} ms, p99 {Percentile(latencies, 99)} ms, max {latencies[^1]} ms");

    if (events == 0)
    {
        return;
    }

    // 3. Drain: all events written at once (one MULTI, as a batch through the API would), timed until the last finishes.
    var baselineBefore = Direct(events, iterations);
    Console.WriteLine($"direct PBKDF2 on {Environment.ProcessorCount} cores, no queue: {baselineBefore.TotalSeconds:F2} s");
    var drainIds = Enumerable.Range(0, events).Select(i => $"drain-{i}").ToArray();
    var drainStart = DateTimeOffset.UtcNow;
    var watch = Stopwatch.StartNew();
    foreach (var chunk in drainIds.Chunk(1000))
    {
        // iterations = 0 measures the lane's own overhead: noop.cpu events, no work.
        await EnqueueAsync(db, statuses, [.. chunk.Select(id => iterations == 0
            ? (id, EventTypes.NoopCpu, "{}")
            : (id, EventTypes.Pbkdf2, JsonSerializer.Serialize(new { data = "data of " + id, iterations })))]);
    }

    Console.WriteLine($"enqueued {events} in {watch.Elapsed.TotalSeconds:F2} s");
    // Generous deadline: a stuck lane must end the measurement with an error, not hang it.
    await Eventually.TrueAsync(async () => await CountSucceededAsync(db, drainIds) >= events,
        TimeSpan.FromMinutes(30), $"all {events} drain events to succeed", TimeSpan.FromMilliseconds(200));

    var lastFinished = DateTimeOffset.MinValue;
    foreach (var id in drainIds)
    {
        var finished = (await statuses.GetAsync(id))!.FinishedAt!.Value;
        lastFinished = finished > lastFinished ? finished : lastFinished;
    }

    var drain = lastFinished - drainStart;
    var baselineAfter = Direct(events, iterations);
    var baseline = (baselineBefore + baselineAfter) / 2;
    Console.WriteLine($"lane drain of {events} {(iterations == 0 ? "noop.cpu" : $"hash.pbkdf2 × {iterations} iterations")}: {drain.TotalSeconds:F2} s = {events / drain.TotalSeconds:F0} events/s (first enqueue → last finishedAt)");
    Console.WriteLine($"direct again: {baselineAfter.TotalSeconds:F2} s; mean direct {baseline.TotalSeconds:F2} s; lane/direct = {drain / baseline:F3}");
    Console.WriteLine($"load average at end: {File.ReadAllText("/proc/loadavg").Trim()}");
}

static long CpuTicks(int pid)
{
    // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
    var stat = File.ReadAllText($"/proc/{pid}/stat");
    var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
    return long.Parse(fields[11]) + long.Parse(fields[12]);
}

static TimeSpan Direct(int count, int iterations)
{
    if (iterations == 0)
    {
        return TimeSpan.Zero; // noop: no work to time
    }

    var watch = Stopwatch.StartNew();
    Parallel.For(0, count, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, i =>
    {
        var id = $"drain-{i}";
        Rfc2898DeriveBytes.Pbkdf2(Encoding.UTF8.GetBytes("data of " + id), Encoding.UTF8.GetBytes(id), iterations, HashAlgorithmName.SHA256, 32);
    });
    return watch.Elapsed;
}

static async Task EnqueueAsync(IDatabase db, EventStatusStore statuses, (string Id, string Type, string Payload)[] batch)
{
    var acceptedAt = DateTimeOffset.UtcNow;
    var transaction = db.CreateTransaction();
    var writes = new List<Task>();
    foreach (var (id, type, payload) in batch)
    {
        writes.Add(statuses.MarkAcceptedAsync(transaction, id, type, Lanes.Cpu, acceptedAt));
        writes.Add(transaction.StreamAddAsync(CpuLaneStreams.Stream, CpuLaneStreams.NewEntry(id, type, payload, acceptedAt, null)));
    }

    if (!await transaction.ExecuteAsync())
    {
        throw new InvalidOperationException("enqueue not committed");
    }

    await Task.WhenAll(writes);
}

static async Task<EventStatus> WaitFinishedAsync(EventStatusStore statuses, string id)
{
    while (true)
    {
        var status = await statuses.GetAsync(id);
        if (status is { State: EventStates.Succeeded })
        {
            return status;
        }

        await Task.Delay(50);
    }
}

static async Task<int> CountSucceededAsync(IDatabase db, string[] ids)
{
    var batch = db.CreateBatch();
    var reads = ids.Select(id => batch.HashGetAsync(EventStatusStore.Key(id), "state")).ToArray();
    batch.Execute();
    return (await Task.WhenAll(reads)).Count(v => v == EventStates.Succeeded);
}

static double Percentile(List<double> sorted, int p) => sorted[Math.Clamp((int)Math.Ceiling(p / 100.0 * sorted.Count) - 1, 0, sorted.Count - 1)];
