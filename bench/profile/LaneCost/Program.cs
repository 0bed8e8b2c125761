// The CPU lane's cost per event, measured without the noise of a shared machine's throughput figures: a real
// redis-server, rabbitmq-server, Producer.Api and Worker.Cpu (Release builds, started by this tool on loopback ports),
// `noop.cpu` events of 600 bytes with client-given ids, as the bench sends them.
//   1. CPU time per event of the API, the worker and redis-server (utime+stime from /proc over submit + drain),
//   2. Redis commands per event, per process (Redis MONITOR; each client connection mapped to its process through
//      /proc/net/tcp), split into round trips (commands a client sent) and the commands Lua scripts ran inside Redis.
// Commands per event do not depend on the machine's load: they are the yardstick to compare code changes with.
// Usage: dotnet build -c Release Producer.Api Worker.Cpu
//        dotnet run -c Release --project bench/profile/LaneCost -- [events=10000] [batch=100] [connections=8]
//            [warmup=5000] [monitorEvents=2000] [--iterations I] [--api KEY=VALUE ...] [--worker KEY=VALUE ...]
//        --iterations I sends `hash.pbkdf2` with I iterations instead of `noop.cpu` (the PBKDF2 lane, where events
//        finish one at a time and each round trip is paid alone).
using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using EventPipeline.Testing;
using StackExchange.Redis;

var positional = new List<int>();
var apiExtra = new Dictionary<string, string?>();
var workerExtra = new Dictionary<string, string?>();
var iterations = 0;
for (var i = 0; i < args.Length; i++)
{
    if (args[i] == "--iterations")
    {
        iterations = int.Parse(args[++i], CultureInfo.InvariantCulture);
    }
    else if (args[i] is "--api" or "--worker")
    {
        var pair = args[++i].Split('=', 2);
        (args[i - 1] == "--api" ? apiExtra : workerExtra)[pair[0]] = pair[1];
    }
    else
    {
        positional.Add(int.Parse(args[i], CultureInfo.InvariantCulture));
    }
}

int Arg(int index, int fallback) => positional.Count > index ? positional[index] : fallback;
var events = Arg(0, 10_000);
var batch = Arg(1, 100);
var connections = Arg(2, 8);
var warmup = Arg(3, 5_000);
var monitorEvents = Arg(4, 2_000);
const string SubmitKey = "lanecost-submit-key-0123456789ab";

Console.WriteLine($"cores {Environment.ProcessorCount}; load average at start: {File.ReadAllText("/proc/loadavg").Trim()}");
Console.WriteLine($"type {(iterations > 0 ? $"hash.pbkdf2 × {iterations} iterations" : "noop.cpu")}, events {events}, batch {batch}, connections {connections}, warm-up {warmup}, monitored {monitorEvents}; api {Show(apiExtra)}; worker {Show(workerExtra)}");

var redisTask = RedisServer.StartAsync();
var rabbitTask = RabbitMqServer.StartAsync();
await using var redis = await redisTask;
await using var rabbit = await rabbitTask;
await using var client = await redis.ConnectAsync();
var db = client.GetDatabase();

var common = new Dictionary<string, string?>
{
    ["ConnectionStrings__redis"] = redis.ConnectionString,
    ["ConnectionStrings__rabbitmq"] = rabbit.ConnectionString,
    ["ASPNETCORE_ENVIRONMENT"] = "Production",
    ["Logging__LogLevel__Default"] = "Warning",
};
var apiSettings = new Dictionary<string, string?>(common)
{
    ["Auth__ApiKeys__Submit"] = SubmitKey,
    ["Auth__ApiKeys__Admin"] = "lanecost-admin-key-0123456789abcd",
    ["LaneMonitor__RabbitMqPrometheusUrl"] = $"http://127.0.0.1:{rabbit.PrometheusPort}",
    ["Downstream__AllowedHosts__0"] = "127.0.0.1",
};
foreach (var (k, v) in apiExtra)
{
    apiSettings[k] = v;
}

var workerSettings = new Dictionary<string, string?>(common);
foreach (var (k, v) in workerExtra)
{
    workerSettings[k] = v;
}

await using var api = ServiceProcess.Start("Producer.Api", apiSettings, out var apiPort);
await using var worker = ServiceProcess.Start("Worker.Cpu", workerSettings, out var workerPort);
await ServiceProcess.WaitUntilReadyAsync(api, apiPort, TimeSpan.FromSeconds(120));
await ServiceProcess.WaitUntilReadyAsync(worker, workerPort, TimeSpan.FromSeconds(120));

using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = connections })
{
    BaseAddress = new Uri($"http://127.0.0.1:{apiPort}"),
    Timeout = TimeSpan.FromSeconds(60),
};
http.DefaultRequestHeaders.Add("X-Api-Key", SubmitKey);

var run = Guid.NewGuid().ToString("N")[..8];
await SubmitAndDrainAsync($"warm-{run}", warmup);
// The services' timers (lane sampler, promoter, heartbeat) settle; the measured window starts from a quiet lane.
await Task.Delay(TimeSpan.FromSeconds(2));

// 1. CPU time per event, submit and drain together (as the bench's burst).
var processes = new (string Name, int Pid)[] { ("producer-api", api.Pid), ("worker-cpu", worker.Pid), ("redis", redis.Pid) };
var before = processes.Select(p => CpuTicks(p.Pid)).ToArray();
var workerThreadsBefore = ThreadTicks(worker.Pid);
var watch = Stopwatch.StartNew();
var ids = await SubmitAndDrainAsync($"cpu-{run}", events);
var elapsed = watch.Elapsed;
var after = processes.Select(p => CpuTicks(p.Pid)).ToArray();
var workerThreadsAfter = ThreadTicks(worker.Pid);
var succeeded = await CountSucceededAsync(ids);
Console.WriteLine();
Console.WriteLine($"submit + drain of {events}: {elapsed.TotalSeconds:F2} s = {events / elapsed.TotalSeconds:F0} events/s; succeeded {succeeded}/{events}");
Console.WriteLine("CPU µs per event: " + string.Join(", ", processes.Select((p, i) => $"{p.Name} {(after[i] - before[i]) * 10_000.0 / events:F0}"))
    + $", together {(after.Sum() - before.Sum()) * 10_000.0 / events:F0}");
// The worker's threads by name (thread-pool workers, the Redis client's socket threads, timers...): how many were busy
// beside the computation and what each kind cost per event (a thread born in the window counts from zero).
var byKind = workerThreadsAfter
    .GroupBy(t => t.Value.Name)
    .Select(g => (Name: g.Key, Threads: g.Count(), Ticks: g.Sum(t => t.Value.Ticks - workerThreadsBefore.GetValueOrDefault(t.Key).Ticks)))
    .Where(k => k.Ticks > 0)
    .OrderByDescending(k => k.Ticks);
Console.WriteLine("worker-cpu threads, CPU µs per event: " + string.Join(", ", byKind.Select(k => $"{k.Name} ×{k.Threads} {k.Ticks * 10_000.0 / events:F0}")));

// 2. Commands per event, per process, seen by MONITOR (a separate run: MONITOR costs Redis CPU).
var monitor = await RedisMonitor.StartAsync(redis.Port, redis.Password);
await SubmitAndDrainAsync($"mon-{run}", monitorEvents);
await Task.Delay(200); // the last replies reach the monitor
var lines = monitor.Stop();
var owners = SocketOwners(redis.Port, processes.Take(2).ToArray());
Console.WriteLine();
Console.WriteLine($"Redis commands per event ({monitorEvents} events; round trips = commands a client sent, in Lua = commands its scripts ran):");
foreach (var (process, sent, inLua) in Attribute(lines, owners))
{
    if (process == "other")
    {
        continue; // this tool's own polling
    }

    Console.WriteLine($"  {process}: round trips {sent.Values.Sum() / (double)monitorEvents:F3} per event ({Per(sent, monitorEvents)}); in Lua {inLua.Values.Sum() / (double)monitorEvents:F3} ({Per(inLua, monitorEvents)})");
}

Console.WriteLine($"load average at end: {File.ReadAllText("/proc/loadavg").Trim()}");
return;

async Task<List<string>> SubmitAndDrainAsync(string prefix, int count)
{
    var all = Enumerable.Range(0, count).Select(i => $"{prefix}-{i}").ToList();
    var bodies = all.Chunk(batch).Select(chunk => Body(chunk)).ToList();
    using var gate = new SemaphoreSlim(connections);
    var posts = bodies.Select(async body =>
    {
        await gate.WaitAsync();
        try
        {
            using var content = new ByteArrayContent(body);
            content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            using var response = await http.PostAsync(batch == 1 ? "/events" : "/events/batch", content);
            if (!response.IsSuccessStatusCode)
            {
                throw new InvalidOperationException($"submit answered {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
            }
        }
        finally
        {
            gate.Release();
        }
    });
    await Task.WhenAll(posts);
    await Eventually.TrueAsync(async () => await db.StreamLengthAsync("events.cpu") == 0,
        TimeSpan.FromMinutes(10), $"{count} events to drain", TimeSpan.FromMilliseconds(20));
    return all;
}

byte[] Body(string[] chunk)
{
    var buffer = new System.Buffers.ArrayBufferWriter<byte>();
    using (var json = new Utf8JsonWriter(buffer))
    {
        if (batch != 1)
        {
            json.WriteStartObject();
            json.WriteStartArray("events");
        }

        foreach (var id in chunk)
        {
            json.WriteStartObject();
            json.WriteString("id", id);
            json.WriteString("type", iterations > 0 ? "hash.pbkdf2" : "noop.cpu");
            json.WriteStartObject("payload");
            json.WriteString("data", new string('x', Math.Max(0, 600 - (iterations > 0 ? 80 : 60) - id.Length)));
            if (iterations > 0)
            {
                json.WriteNumber("iterations", iterations);
            }

            json.WriteEndObject();
            json.WriteEndObject();
        }

        if (batch != 1)
        {
            json.WriteEndArray();
            json.WriteEndObject();
        }
    }

    return buffer.WrittenSpan.ToArray();
}

async Task<int> CountSucceededAsync(List<string> all)
{
    var reads = db.CreateBatch();
    var states = all.Select(id => reads.HashGetAsync($"event:{id}", "state")).ToList();
    reads.Execute();
    await Task.WhenAll(states);
    return states.Count(s => s.Result == "succeeded");
}

static string Show(Dictionary<string, string?> settings) => settings.Count == 0 ? "defaults" : string.Join(" ", settings.Select(kv => $"{kv.Key}={kv.Value}"));

static string Per(Dictionary<string, long> counts, int n) =>
    string.Join(", ", counts.OrderByDescending(kv => kv.Value).Select(kv => $"{kv.Key} {kv.Value / (double)n:F3}"));

static long CpuTicks(int pid)
{
    // Fields after the ")" of the command name: utime is field 14, stime 15 (clock ticks of 10 ms).
    var stat = File.ReadAllText($"/proc/{pid}/stat");
    var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
    return long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
}

// Each thread of a process: its name and utime+stime (clock ticks).
static Dictionary<int, (string Name, long Ticks)> ThreadTicks(int pid)
{
    var threads = new Dictionary<int, (string Name, long Ticks)>();
    foreach (var task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
    {
        try
        {
            var stat = File.ReadAllText(Path.Combine(task, "stat"));
            var name = stat[(stat.IndexOf('(') + 1)..stat.LastIndexOf(')')];
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            threads[int.Parse(Path.GetFileName(task), CultureInfo.InvariantCulture)] =
                (name, long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture));
        }
        catch (IOException)
        {
            // the thread ended meanwhile
        }
    }

    return threads;
}

// Local port of each loopback connection to Redis → the process that holds its socket.
static Dictionary<int, string> SocketOwners(int redisPort, (string Name, int Pid)[] processes)
{
    var inodes = new Dictionary<string, string>();
    foreach (var (name, pid) in processes)
    {
        foreach (var fd in Directory.EnumerateFiles($"/proc/{pid}/fd"))
        {
            try
            {
                var target = new FileInfo(fd).LinkTarget;
                if (target is not null && target.StartsWith("socket:[", StringComparison.Ordinal))
                {
                    inodes[target[8..^1]] = name;
                }
            }
            catch (IOException)
            {
            }
        }
    }

    var owners = new Dictionary<int, string>();
    foreach (var line in File.ReadLines("/proc/net/tcp").Skip(1))
    {
        var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        var local = int.Parse(f[1].Split(':')[1], NumberStyles.HexNumber);
        var remote = int.Parse(f[2].Split(':')[1], NumberStyles.HexNumber);
        if (remote == redisPort && inodes.TryGetValue(f[9], out var owner))
        {
            owners[local] = owner;
        }
    }

    return owners;
}

// MONITOR prints a script's line ("EVALSHA …") before the commands it ran ("[0 lua]"): those belong to the last client line.
static List<(string Process, Dictionary<string, long> Sent, Dictionary<string, long> InLua)> Attribute(List<string> lines, Dictionary<int, string> owners)
{
    var result = new Dictionary<string, (Dictionary<string, long> Sent, Dictionary<string, long> InLua)>();
    (Dictionary<string, long> Sent, Dictionary<string, long> InLua)? last = null;
    foreach (var line in lines)
    {
        var open = line.IndexOf('[');
        var close = line.IndexOf(']', open + 1);
        if (open < 0 || close < 0)
        {
            continue;
        }

        var source = line[(open + 1)..close].Split(' ').Last();
        var quote = line.IndexOf('"', close);
        var command = quote < 0 ? "?" : line[(quote + 1)..line.IndexOf('"', quote + 1)].ToLowerInvariant();
        if (source == "lua")
        {
            if (last is { } script)
            {
                script.InLua[command] = script.InLua.GetValueOrDefault(command) + 1;
            }

            continue;
        }

        var port = int.TryParse(source.Split(':').Last(), out var p) ? p : -1;
        var process = owners.GetValueOrDefault(port, "other");
        if (!result.TryGetValue(process, out var counts))
        {
            result[process] = counts = ([], []);
        }

        counts.Sent[command] = counts.Sent.GetValueOrDefault(command) + 1;
        last = counts;
    }

    return [.. result.OrderBy(kv => kv.Key).Select(kv => (kv.Key, kv.Value.Sent, kv.Value.InLua))];
}

/// <summary>A raw MONITOR connection collecting every line Redis prints until stopped.</summary>
internal sealed class RedisMonitor
{
    private readonly TcpClient _tcp;
    private readonly List<string> _lines = [];
    private readonly Task _reading;

    private RedisMonitor(TcpClient tcp, StreamReader reader)
    {
        _tcp = tcp;
        _reading = Task.Run(async () =>
        {
            try
            {
                while (await reader.ReadLineAsync() is { } line)
                {
                    lock (_lines)
                    {
                        _lines.Add(line);
                    }
                }
            }
            catch (Exception ex) when (ex is IOException or ObjectDisposedException)
            {
            }
        });
    }

    public static async Task<RedisMonitor> StartAsync(int port, string password)
    {
        var tcp = new TcpClient();
        await tcp.ConnectAsync("127.0.0.1", port);
        var stream = tcp.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes($"AUTH {password}\r\nMONITOR\r\n"));
        var reader = new StreamReader(stream, Encoding.UTF8);
        // +OK for AUTH and for MONITOR, then the commands.
        for (var i = 0; i < 2; i++)
        {
            var reply = await reader.ReadLineAsync();
            if (reply != "+OK")
            {
                throw new InvalidOperationException($"MONITOR refused: {reply}");
            }
        }

        return new RedisMonitor(tcp, reader);
    }

    public List<string> Stop()
    {
        _tcp.Close();
        _reading.Wait(TimeSpan.FromSeconds(5));
        lock (_lines)
        {
            return [.. _lines];
        }
    }
}
