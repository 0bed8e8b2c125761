// The floor under issue 16's HTTP and Redis targets, measured on the machine itself: what the cheapest possible
// single-event POST costs in CPU, before any queue, status or guarantee is added.
//   1. `server`: a minimal ASP.NET Core endpoint (POST /events reads the body and answers 202 with a small JSON id),
//      Kestrel defaults, no middleware, no logging, no telemetry — the least an HTTP ingest can do per request.
//   2. the client loop (this process): `connections` concurrent HttpClient loops, each posting one pre-built 600-byte
//      body per request and reading the answer, with activity propagation off — the least a .NET load generator does.
//   3. redis-server's own CPU per command for the commands an event needs at the least (XADD, XREADGROUP, XACK —
//      the XACK names an id that is not pending, so it is a lookup only: a floor under the real one),
//      driven by redis-benchmark with 16 clients, no pipelining (one command per round trip, as a consumer sends them).
// CPU per request = utime+stime of each process over the measured requests / requests (from /proc, after a warm-up).
// Usage: dotnet run -c Release --project bench/profile/HttpFloor -- [requests=60000] [connections=16] [warmup=10000]
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using EventPipeline.Testing;

if (args.Length > 0 && args[0] == "server")
{
    var builder = WebApplication.CreateSlimBuilder();
    builder.Logging.ClearProviders();
    builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, int.Parse(args[1], CultureInfo.InvariantCulture)));
    var app = builder.Build();
    var buffer = new byte[64 * 1024];
    app.MapPost("/events", async context =>
    {
        // Read the whole body, as an ingest must; answer 202 with an id, as the API does.
        var body = context.Request.Body;
        while (await body.ReadAsync(buffer) > 0)
        {
        }

        context.Response.StatusCode = StatusCodes.Status202Accepted;
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync("{\"id\":\"0123456789abcdef0123456789abcdef\"}");
    });
    app.MapGet("/ready", () => "ok");
    await app.RunAsync();
    return;
}

AppContext.SetSwitch("System.Net.Http.EnableActivityPropagation", false);
int Arg(int index, int fallback) => args.Length > index ? int.Parse(args[index], CultureInfo.InvariantCulture) : fallback;
var requests = Arg(0, 60_000);
var connections = Arg(1, 16);
var warmup = Arg(2, 10_000);
Console.WriteLine($"cores {Environment.ProcessorCount}; load average at start: {File.ReadAllText("/proc/loadavg").Trim()}");

var port = FreePort();
using var server = Process.Start(new ProcessStartInfo(Environment.ProcessPath!, ["server", port.ToString(CultureInfo.InvariantCulture)])
{
    RedirectStandardOutput = true,
    RedirectStandardError = true,
    UseShellExecute = false,
})!;
server.OutputDataReceived += (_, _) => { };
server.ErrorDataReceived += (_, e) => { if (e.Data is not null) Console.Error.WriteLine($"server: {e.Data}"); };
server.BeginOutputReadLine();
server.BeginErrorReadLine();
try
{
    using var http = new HttpClient(new SocketsHttpHandler
    {
        MaxConnectionsPerServer = connections,
        ActivityHeadersPropagator = null,
        UseCookies = false,
        AutomaticDecompression = DecompressionMethods.None,
    })
    {
        BaseAddress = new Uri($"http://127.0.0.1:{port}/"),
    };
    await Eventually.TrueAsync(async () =>
    {
        try
        {
            return (await http.GetAsync("ready")).IsSuccessStatusCode;
        }
        catch (HttpRequestException)
        {
            return false;
        }
    }, TimeSpan.FromSeconds(30), "the floor server never answered");

    var body = Encoding.UTF8.GetBytes("{\"type\":\"noop.cpu\",\"payload\":{\"data\":\"" + new string('x', 556) + "\"}}");
    await Drive(http, body, warmup, connections);
    var (serverBefore, clientBefore) = (CpuTime(server.Id), Process.GetCurrentProcess().TotalProcessorTime);
    var clock = Stopwatch.StartNew();
    await Drive(http, body, requests, connections);
    var elapsed = clock.Elapsed;
    var (serverAfter, clientAfter) = (CpuTime(server.Id), Process.GetCurrentProcess().TotalProcessorTime);
    Console.WriteLine($"HTTP floor: {requests:N0} POSTs of {body.Length} bytes on {connections} connections in {elapsed.TotalSeconds:F2} s = {requests / elapsed.TotalSeconds:N0}/s");
    Console.WriteLine($"  server (minimal Kestrel endpoint): {PerRequest(serverAfter - serverBefore, requests):F1} µs CPU per request");
    Console.WriteLine($"  client (HttpClient loops):         {PerRequest(clientAfter - clientBefore, requests):F1} µs CPU per request");
}
finally
{
    server.Kill();
    await server.WaitForExitAsync();
}

await using (var redis = await RedisServer.StartAsync())
{
    foreach (var command in new[] { "XADD floor * data " + new string('x', 560), "XREADGROUP GROUP g c COUNT 1 STREAMS floor >", "XACK floor g 1-1" })
    {
        if (command.StartsWith("XREADGROUP", StringComparison.Ordinal))
        {
            await using var setup = await redis.ConnectAsync();
            await setup.GetDatabase().ExecuteAsync("XGROUP", "CREATE", "floor", "g", "0", "MKSTREAM");
        }

        var n = command.StartsWith("XREADGROUP", StringComparison.Ordinal) ? requests / 2 : requests;
        var before = CpuTime(redis.Pid);
        var clock = Stopwatch.StartNew();
        using var benchmark = Process.Start(new ProcessStartInfo("redis-benchmark",
            ["-h", "127.0.0.1", "-p", redis.Port.ToString(CultureInfo.InvariantCulture), "-a", redis.Password, "-c", connections.ToString(CultureInfo.InvariantCulture),
             "-n", n.ToString(CultureInfo.InvariantCulture), "-q", .. command.Split(' ')])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        })!;
        var output = await benchmark.StandardOutput.ReadToEndAsync();
        await benchmark.WaitForExitAsync();
        var elapsed = clock.Elapsed;
        var cpu = CpuTime(redis.Pid) - before;
        Console.WriteLine($"redis-server {command.Split(' ')[0]}: {n:N0} commands in {elapsed.TotalSeconds:F2} s, {PerRequest(cpu, n):F1} µs CPU per command ({Summary(output)})");
    }
}

static async Task Drive(HttpClient http, byte[] body, int total, int connections)
{
    var next = -1;
    await Task.WhenAll(Enumerable.Range(0, connections).Select(async _ =>
    {
        while (Interlocked.Increment(ref next) < total)
        {
            using var content = new ByteArrayContent(body);
            content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
            using var response = await http.PostAsync("events", content);
            if (response.StatusCode != HttpStatusCode.Accepted)
            {
                throw new InvalidOperationException($"the floor server answered {(int)response.StatusCode}");
            }

            await response.Content.ReadAsByteArrayAsync();
        }
    }));
}

static TimeSpan CpuTime(int pid)
{
    // utime and stime are fields 14 and 15 of /proc/<pid>/stat, in clock ticks (100 per second on Linux).
    var stat = File.ReadAllText($"/proc/{pid}/stat");
    var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
    var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
    return TimeSpan.FromSeconds(ticks / 100.0);
}

// redis-benchmark -q ends with "<command>: <n> requests per second, p50=<x> msec"; the command (a 560-byte value) is
// left out.
static string Summary(string output)
{
    var last = output.Trim().Split('\r', '\n').LastOrDefault(l => l.Length > 0)?.Trim() ?? "";
    return last[(last.LastIndexOf(": ", StringComparison.Ordinal) + 2)..];
}

static double PerRequest(TimeSpan cpu, int requests) => cpu.TotalMicroseconds / requests;

static int FreePort()
{
    using var listener = new TcpListener(IPAddress.Loopback, 0);
    listener.Start();
    return ((IPEndPoint)listener.LocalEndpoint).Port;
}
