using System.Text.Json;
using EventPipeline.Bench.Report;
using SkiaSharp;

namespace EventPipeline.Bench.Tests;

/// <summary>
/// The tool's own correctness on a real system (started by the tool through the AppHost): every event is accounted for
/// and the report files are really written. Timings are reported by the tool, never asserted here.
/// </summary>
[Collection(ChaosCollections.SingleNodeAndQuickSuite)]
public sealed class QuickSuiteTests : IDisposable
{
    private readonly string _out = Directory.CreateTempSubdirectory("ep-bench-test-").FullName;

    [Fact]
    public async Task Quick_suite_accounts_for_every_event_and_writes_json_markdown_and_charts()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(8));
        var output = new StringWriter();
        int exit;
        try
        {
            exit = await BenchApp.RunAsync(["suite", "--quick", "--out", _out, "--deadline", "240"], output, TextWriter.Null, timeout.Token);
        }
        catch (Exception e)
        {
            // The tool's own lines (every resource's state, the logs of those not running healthy) are the only account
            // of why; the states that are not running healthy come first, where a CI summary's few lines show them.
            var states = output.ToString().Split('\n')
                .Where(l => l.Contains(": state ", StringComparison.Ordinal) && !l.Contains("state Running, exit code -, health Healthy", StringComparison.Ordinal));
            throw new Xunit.Sdk.XunitException(
                $"{e.GetType().Name}: {e.Message}\n{string.Join('\n', states)}\n--- the tool's output ---\n{output}\n--- end ---\n{e}");
        }

        Assert.True(exit == 0, $"exit code {exit}\n--- the tool's output ---\n{output}");

        var run = JsonSerializer.Deserialize<JsonElement>(await File.ReadAllTextAsync(Path.Combine(_out, "suite-quick.json")));
        var scenarios = run.GetProperty("scenarios").EnumerateArray().ToList();
        Assert.Equal(
            ["pickup-cpu", "pickup-io", "noop-cpu-burst", "noop-io-burst", "noop-cpu-single", "cpu-burst", "io-burst", "ingest-cpu", "ingest-io"],
            scenarios.Select(s => s.GetProperty("name").GetString()));

        foreach (var s in scenarios)
        {
            var name = s.GetProperty("name").GetString();
            int Int(string field) => s.GetProperty(field).GetInt32();
            Assert.True(Int("events") > 0, name);
            Assert.Equal(Int("events"), Int("accepted") + Int("rejected"));
            Assert.Equal(Int("accepted"), Int("succeeded") + Int("lost"));
            Assert.Equal(0, Int("lost")); // a healthy pipeline with a 240 s deadline finishes 200 events
            Assert.True(s.GetProperty("drainedBeforeDeadline").GetBoolean(), name);
            Assert.Equal(Int("succeeded"), s.GetProperty("latency").GetProperty("count").GetInt32());
            var duplicated = s.GetProperty("duplicated").GetInt32(); // known: Redis and the receiver are available here
            Assert.InRange(duplicated, 0, Int("succeeded"));
            Assert.True(s.GetProperty("laneSamples").GetArrayLength() > 0, $"{name}: no /lanes samples");
            Assert.Equal(6, s.GetProperty("processes").GetArrayLength());
            Assert.All(s.GetProperty("processes").EnumerateArray(), p => Assert.True(p.GetProperty("peakRssMb").GetDouble() > 0, p.ToString()));
            Assert.All(s.GetProperty("processes").EnumerateArray(), p => Assert.True(p.GetProperty("cpuUsPerEvent").GetDouble() >= 0, p.ToString()));
            Assert.True(s.GetProperty("cpuUsPerEvent").GetDouble() > 0, $"{name}: no CPU per event");

            var chart = Path.Combine(_out, s.GetProperty("chart").GetString()!);
            AssertIsRealPng(chart, DepthChart.Width, DepthChart.Height);
        }

        // Every burst is measured after an unreported warm-up of its own workload, and the result says how many.
        Assert.All(scenarios, s => Assert.Equal(BenchApp.SuiteWarmup(s.GetProperty("name").GetString()!, quick: true), s.GetProperty("warmup").GetInt32()));
        Assert.All(["noop-cpu-burst", "noop-io-burst", "noop-cpu-single", "cpu-burst", "io-burst"],
            name => Assert.True(scenarios.Single(s => s.GetProperty("name").GetString() == name).GetProperty("warmup").GetInt32() > 0, name));

        var cpu = scenarios.Single(s => s.GetProperty("name").GetString() == "cpu-burst");
        Assert.True(cpu.GetProperty("ceiling").GetProperty("eventsPerSecond").GetDouble() > 0);
        Assert.True(cpu.GetProperty("ceilingRatio").GetDouble() > 0);
        var ceiling = run.GetProperty("ceiling");
        Assert.True(ceiling.GetProperty("before").GetArrayLength() > 0 && ceiling.GetProperty("after").GetArrayLength() > 0, ceiling.ToString());
        Assert.Equal("receiver /received/{key} count > 1",
            scenarios.Single(s => s.GetProperty("name").GetString() == "io-burst").GetProperty("duplicateSource").GetString());
        Assert.NotEmpty(run.GetProperty("targets").EnumerateArray());
        Assert.Equal(6, run.GetProperty("idle").GetProperty("processes").GetArrayLength());

        var markdown = await File.ReadAllTextAsync(Path.Combine(_out, "suite-quick.md"));
        Assert.All(scenarios, s => Assert.Contains($"| {s.GetProperty("name").GetString()} |", markdown));
        Assert.Contains("| target | measured | met |", markdown);
        Assert.Contains("suite --quick", markdown);
    }

    /// <summary>Decoded by SkiaSharp: a file that only starts like a PNG, or is blank, fails.</summary>
    internal static void AssertIsRealPng(string path, int width, int height)
    {
        var bytes = File.ReadAllBytes(path);
        Assert.True(bytes.AsSpan().StartsWith(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }), $"{path} is not a PNG");
        using var bitmap = SKBitmap.Decode(bytes);
        Assert.NotNull(bitmap);
        Assert.Equal((width, height), (bitmap.Width, bitmap.Height));
        var colours = new HashSet<uint>();
        for (var y = 0; y < bitmap.Height; y += 7)
        {
            for (var x = 0; x < bitmap.Width; x += 7)
            {
                colours.Add((uint)bitmap.GetPixel(x, y));
            }
        }

        Assert.True(colours.Count > 3, $"{path} is (nearly) blank: {colours.Count} colours");
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(_out, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
