using System.Text.Json;
using EventPipeline.Bench.Cli;
using EventPipeline.Bench.Observe;
using EventPipeline.Bench.Report;
using EventPipeline.Bench.Workloads;
using EventPipeline.Worker.Cpu.Work;

namespace EventPipeline.Bench.Tests;

/// <summary>The parts of the tool that need no running system.</summary>
public sealed class ToolUnitTests
{
    [Theory]
    [InlineData("noop-cpu", "noop.cpu")]
    [InlineData("noop-io", "noop.io")]
    [InlineData("cpu", "hash.pbkdf2")]
    [InlineData("io", "webhook.post")]
    public void Every_workload_event_is_600_bytes_of_json_of_its_type(string workload, string type)
    {
        var w = Workload.Parse(workload, 10_000, 50);
        var json = w.EventJson("bench-abcdef12-0000042");
        Assert.Equal(Workload.EventBytes, json.Length);
        using var doc = JsonDocument.Parse(json);
        Assert.Equal(type, doc.RootElement.GetProperty("type").GetString());
        Assert.Equal("bench-abcdef12-0000042", doc.RootElement.GetProperty("id").GetString());
    }

    [Fact]
    public void Io_workload_asks_the_receiver_for_its_delay()
    {
        using var doc = JsonDocument.Parse(Workload.Parse("io", 0, 50).EventJson("e1"));
        Assert.Equal(50, doc.RootElement.GetProperty("payload").GetProperty("simulate").GetProperty("delayMs").GetInt32());
    }

    [Fact]
    public void Cpu_workload_with_zero_iterations_is_noop_cpu()
    {
        Assert.Equal("noop.cpu", Workload.Parse("cpu", 0, 0).EventType);
    }

    [Fact]
    public void No_queue_ceiling_computes_exactly_what_the_cpu_worker_computes()
    {
        var w = Workload.Parse("cpu", 1000, 0);
        const string id = "bench-0000-0000001";
        var payload = JsonDocument.Parse(w.EventJson(id)).RootElement.GetProperty("payload").GetRawText();
        Assert.Equal(CpuWork.Pbkdf2(id, payload), Workload.Pbkdf2(id, w.Data(id), w.Iterations));
    }

    [Fact]
    public void Percentiles_are_nearest_rank_values_that_really_occurred()
    {
        var summary = LatencySummary.Of(Enumerable.Range(1, 200).Select(i => (double)i))!;
        Assert.Equal((200, 100.0, 190.0, 198.0, 200.0), (summary.Count, summary.P50, summary.P95, summary.P99, summary.Max));
        Assert.Equal(7, LatencySummary.Of([7])!.P99);
        Assert.Null(LatencySummary.Of([]));
    }

    [Fact]
    public void Chart_is_a_real_png_even_without_samples()
    {
        var path = Path.Combine(Path.GetTempPath(), $"ep-bench-chart-{Guid.NewGuid():N}.png");
        try
        {
            DepthChart.Render([], "empty", path);
            QuickSuiteTests.AssertIsRealPng(path, DepthChart.Width, DepthChart.Height);
            DepthChart.Render([new LaneSample(0, 0, 0, 0, 0, 0), new LaneSample(0.1, 500, 400, 100, 20, 20), new LaneSample(0.2, 0, 0, 0, 0, 0)], "three", path);
            QuickSuiteTests.AssertIsRealPng(path, DepthChart.Width, DepthChart.Height);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task Completion_waiter_reports_unfinished_events_at_the_deadline()
    {
        var reader = new ScriptedStatuses(id => id == "stuck" ? "processing" : "succeeded");
        var waiter = new CompletionWaiter(reader);
        var drained = await waiter.WaitAsync(["a", "stuck", "b"], DateTimeOffset.UtcNow.AddMilliseconds(600), CancellationToken.None);
        Assert.False(drained);
        Assert.Equal(2, waiter.Finished);
        Assert.True(await new CompletionWaiter(reader).WaitAsync(["a", "b"], DateTimeOffset.UtcNow.AddSeconds(30), CancellationToken.None));
    }

    [Theory]
    [InlineData("burst", "--batch", "1001")]
    [InlineData("burst", "--url", "http://localhost:1")]
    [InlineData("fly")]
    [InlineData("burst", "--set", "no-colon")]
    public async Task Bad_command_lines_exit_2_with_the_usage(params string[] args)
    {
        var log = new StringWriter();
        Assert.Equal(2, await BenchApp.RunAsync(args, TextWriter.Null, log, CancellationToken.None));
        Assert.Contains("usage:", log.ToString());
    }

    [Fact]
    public void Set_option_targets_one_resource_environment_variable()
    {
        var options = BenchOptions.Parse(["burst", "--set", "worker-io:IoLane__ConcurrentMessageLimit=512"]);
        Assert.Equal(("worker-io", "IoLane__ConcurrentMessageLimit", "512"), options.Settings.Single());
    }

    [Fact]
    public void Targets_are_marked_met_or_not_from_the_measured_figures()
    {
        var run = new BenchRun { Label = "t", CommandLine = "x", StartedAt = DateTimeOffset.UtcNow, Machine = MachineInfo.Capture("Release"), Target = "t" };
        run.Scenarios.Add(Scenario("noop-cpu-burst") with { EndToEndRate = 20_000 });
        run.Scenarios.Add(Scenario("noop-io-burst") with { EndToEndRate = 9_000 });
        var verdicts = TargetJudge.Judge(run).ToList();
        Assert.True(verdicts.Single(v => v.Target.Contains("Redis", StringComparison.Ordinal)).Met);
        Assert.False(verdicts.Single(v => v.Target.Contains("RabbitMQ", StringComparison.Ordinal)).Met);
        run.Targets.AddRange(verdicts);
        Assert.Contains("❌ not met", ReportWriter.Markdown(run));
    }

    [Fact]
    public void Ceiling_is_the_best_warmed_round_before_or_after_the_run_and_keeps_the_spread()
    {
        var ceiling = CeilingResult.Of(1000, 10_000, 2, before: [850, 862, 858], after: [640, 845, 866]);
        Assert.Equal(866, ceiling.EventsPerSecond);
        Assert.Equal(640, ceiling.Min);
        Assert.Equal(858, ceiling.Median);
        Assert.Equal([850.0, 862, 858], ceiling.Before);
        Assert.Equal(6, ceiling.Timings!.Count);
    }

    [Fact]
    public void Cpu_lane_ratio_is_judged_against_the_run_ceiling()
    {
        var run = new BenchRun { Label = "t", CommandLine = "x", StartedAt = DateTimeOffset.UtcNow, Machine = MachineInfo.Capture("Release"), Target = "t" };
        run.Scenarios.Add(Scenario("cpu-burst") with { EventType = "hash.pbkdf2", Iterations = 10_000, EndToEndRate = 800 });
        run.Ceiling = CeilingResult.Of(1000, 10_000, 2, [860], [850]);
        BenchApp.ApplyCeiling(run);
        Assert.Equal(0.93, run.Scenarios[0].CeilingRatio);
        Assert.False(TargetJudge.Judge(run).Single(v => v.Target.Contains("ceiling", StringComparison.Ordinal)).Met);
        Assert.Contains("No-queue ceiling", ReportWriter.Markdown(run));
    }

    [Fact]
    public void Cpu_time_per_event_is_reported_per_service_and_for_all_together()
    {
        var run = new BenchRun { Label = "t", CommandLine = "x", StartedAt = DateTimeOffset.UtcNow, Machine = MachineInfo.Capture("Release"), Target = "t" };
        run.Scenarios.Add(Scenario("noop-cpu-burst") with
        {
            Processes = [new ProcessUsage("producer-api", [1], 100, 100, 0.5, 20) { CpuUsPerEvent = 50 }, new ProcessUsage("redis", [2], 20, 20, 0.25, 10) { CpuUsPerEvent = 25 }],
            CpuUsPerEvent = 75,
            ClientCpuUsPerEvent = 12,
            MachineCpuPercentOfOneCore = 190,
            OtherCpuPercentOfOneCore = 35,
        });
        var markdown = ReportWriter.Markdown(run);
        Assert.Contains("| scenario | producer-api | redis | all services | bench client | machine busy", markdown);
        Assert.Contains("| noop-cpu-burst | 50 | 25 | **75** | 12 | 190 | 35 |", markdown);
    }

    private static ScenarioResult Scenario(string name) => new()
    {
        Name = name, Mode = "burst", Workload = "noop-cpu", EventType = "noop.cpu", Lane = "cpu", Events = 10_000,
        Accepted = 10_000, Succeeded = 10_000, DuplicateSource = "status field completions > 1",
    };

    private sealed class ScriptedStatuses(Func<string, string> state) : IStatusReader
    {
        public bool KnowsCompletions => true;

        public Task<EventRecord?[]> ReadAsync(IReadOnlyList<string> ids, CancellationToken cancellationToken) =>
            Task.FromResult(ids.Select(id => (EventRecord?)new EventRecord(state(id), 1, 2, 3, 1)).ToArray());

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}

/// <summary>An earlier run's JSON is enough to judge the targets again and rewrite its markdown.</summary>
public sealed class ReportCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ep-bench-report-").FullName;

    [Fact]
    public async Task Report_command_rejudges_targets_and_rewrites_markdown_from_the_json()
    {
        var run = new BenchRun { Label = "old", CommandLine = "x", StartedAt = DateTimeOffset.UtcNow, Machine = MachineInfo.Capture("Release"), Target = "t" };
        run.Scenarios.Add(new ScenarioResult
        {
            Name = "cpu-burst", Mode = "burst", Workload = "cpu", EventType = "hash.pbkdf2", Lane = "cpu", Events = 100, Accepted = 100,
            Succeeded = 100, EndToEndRate = 500, Ceiling = new CeilingResult(100, 2, 1, 400), CeilingRatio = 1.25, DuplicateSource = "s",
            LaneSamples = [new LaneSample(0.1, 5, 4, 1, 0, 0)],
        });
        run.Targets.Add(new TargetVerdict("stale verdict", "x", true));
        var (json, markdown) = ReportWriter.Write(run, _dir);

        Assert.Equal(0, await BenchApp.RunAsync(["report", "--from", json], TextWriter.Null, TextWriter.Null, CancellationToken.None));

        var text = await File.ReadAllTextAsync(markdown);
        Assert.DoesNotContain("stale verdict", text);
        Assert.Contains("inconclusive", text);
        Assert.Contains("| cpu-burst |", text);
        using var doc = JsonDocument.Parse(await File.ReadAllTextAsync(json));
        Assert.Equal(1, doc.RootElement.GetProperty("scenarios")[0].GetProperty("laneSamples").GetArrayLength());
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
