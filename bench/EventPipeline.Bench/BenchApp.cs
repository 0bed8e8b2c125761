using System.Globalization;
using System.Net;
using System.Reflection;
using EventPipeline.Bench.Cli;
using EventPipeline.Bench.Load;
using EventPipeline.Bench.Observe;
using EventPipeline.Bench.Report;
using EventPipeline.Bench.Target;
using EventPipeline.Bench.Workloads;

namespace EventPipeline.Bench;

/// <summary>The tool: parse the command, get a target (start the AppHost or connect), run the scenarios, write the report.</summary>
public static class BenchApp
{
    /// <returns>
    /// 0 when the run completed (whatever the figures), 2 on a usage error, 1 when the run itself failed; for
    /// <c>chaos</c>, 1 when a guarantee was broken and 3 when the system could not be healed (see ChaosRunner).
    /// </returns>
    public static async Task<int> RunAsync(string[] args, TextWriter output, TextWriter log, CancellationToken cancellationToken)
    {
        BenchOptions options;
        try
        {
            options = BenchOptions.Parse(args);
        }
        catch (UsageException ex)
        {
            if (ex.Message.Length > 0)
            {
                log.WriteLine($"error: {ex.Message}");
            }

            log.WriteLine(BenchOptions.Usage);
            return ex.Message.Length > 0 ? 2 : 0;
        }

        if (options.Command == "report")
        {
            return Rerender(options, output);
        }

        if (options.Command == "chaos")
        {
            return await Chaos.ChaosRunner.RunAsync(options, output, log, cancellationToken);
        }

        var label = ScenarioRunner.Sanitize(options.Label ?? DefaultLabel(options));
        var run = new BenchRun
        {
            Label = label,
            CommandLine = "dotnet run -c Release --project bench/EventPipeline.Bench -- " + string.Join(' ', args.Select(Quote)),
            StartedAt = DateTimeOffset.UtcNow,
            Machine = MachineInfo.Capture(BuildConfiguration()),
            Target = options.StartsAppHost ? "started by the tool through the AppHost" : $"running system at {options.Url}",
        };

        // The PBKDF2 ceiling is timed with the system not running: before it starts and after it stops.
        var ceilingWorkload = RunsPbkdf2(options) ? Workload.Parse("cpu", options.Iterations, options.DelayMs) : null;
        var ceilingCalls = options.CeilingEventsGiven ? options.CeilingEvents : options.Quick ? 100 : options.CeilingEvents;
        var ceilingRounds = options.Quick ? 2 : options.CeilingRounds;
        IReadOnlyList<double> before = [];
        if (ceilingWorkload is not null)
        {
            log.WriteLine($"[ceiling] before the system starts: {CeilingWarmupRounds} warm-up + {ceilingRounds} timed rounds of {ceilingCalls} PBKDF2 calls on {Environment.ProcessorCount} threads …");
            before = NoQueueCeiling.Time(ceilingWorkload, ceilingCalls, ceilingRounds, CeilingWarmupRounds);
        }

        await using (var target = options.StartsAppHost
            ? await AppHostLauncher.StartAsync(options, log, cancellationToken)
            : RunningSystem.Connect(options, log))
        {
            using var api = CreateClient(target.Api, options.Connections, target.ApiKey);
            using var downstream = target.Downstream is null ? null : CreateClient(target.Downstream, 16, null);
            await using IStatusReader statuses = target.Redis is { } redis
                ? await RedisStatusReader.ConnectAsync(redis)
                : new HttpStatusReader(api, 32);
            var runner = new ScenarioRunner(target, api, downstream, statuses, TimeSpan.FromSeconds(options.DeadlineSeconds));

            switch (options.Command)
            {
                case "burst":
                    if (options.Warmup > 0)
                    {
                        // JIT tier-up, connection pools and thread-pool growth happen here, not in the measured burst.
                        log.WriteLine($"[warmup] {options.Warmup} events of the same workload, not reported …");
                        await runner.RunAsync(Burst(options, options.WorkloadName, options.Warmup) with { Name = "warmup" }, Path.GetTempPath(), "warmup", cancellationToken);
                    }

                    run.Scenarios.Add(await runner.RunAsync(Burst(options, options.WorkloadName, options.Count), options.OutDirectory, label, cancellationToken));
                    break;
                case "steady":
                    run.Scenarios.Add(await runner.RunAsync(Steady(options, options.WorkloadName, options.Rate, options.DurationSeconds, options.Batch), options.OutDirectory, label, cancellationToken));
                    break;
                case "idle":
                    foreach (var (name, workload) in new[] { ("pickup-cpu", "noop-cpu"), ("pickup-io", "noop-io") })
                    {
                        run.Scenarios.Add(await runner.RunAsync(Steady(options, workload, options.RateGiven ? options.Rate : 20, 10, 1) with { Name = name },
                            options.OutDirectory, label, cancellationToken));
                    }

                    run.Idle = await IdleAsync(target, options.DurationGiven ? options.DurationSeconds : 15, log, cancellationToken);

                    break;
                case "suite":
                    await SuiteAsync(options, target, runner, run, label, log, cancellationToken);
                    break;
            }
        }

        if (ceilingWorkload is not null)
        {
            log.WriteLine($"[ceiling] after the system stopped: {CeilingWarmupRounds} warm-up + {ceilingRounds} timed rounds …");
            var after = NoQueueCeiling.Time(ceilingWorkload, ceilingCalls, ceilingRounds, CeilingWarmupRounds);
            run.Ceiling = CeilingResult.Of(ceilingCalls, options.Iterations, CeilingWarmupRounds, before, after);
            ApplyCeiling(run);
        }

        if (options.Command == "suite")
        {
            run.Targets.AddRange(TargetJudge.Judge(run));
        }

        run.Machine = run.Machine with { LoadAverageAfter = MachineInfo.LoadAverage() };
        var (json, markdown) = ReportWriter.Write(run, options.OutDirectory);
        output.WriteLine(ReportWriter.Markdown(run));
        output.WriteLine($"written: {json}, {markdown}");
        return 0;
    }

    private static async Task SuiteAsync(BenchOptions options, PipelineTarget target, ScenarioRunner runner, BenchRun run, string label, TextWriter log, CancellationToken cancellationToken)
    {
        var quick = options.Quick;
        int N(int full) => quick ? Math.Min(200, full) : full;
        var batch = quick ? 50 : 100;

        // Pickup first: single events at a low rate on otherwise idle lanes. They also warm the services (JIT,
        // connection pools), so the idle window after them measures steady idling, not start-up work.
        foreach (var (name, workload) in new[] { ("pickup-cpu", "noop-cpu"), ("pickup-io", "noop-io") })
        {
            run.Scenarios.Add(await runner.RunAsync(Steady(options, workload, 20, quick ? 2 : 10, 1) with { Name = name }, options.OutDirectory, label, cancellationToken));
        }

        run.Idle = await IdleAsync(target, quick ? 3 : 30, log, cancellationToken);
        var specs = new List<ScenarioSpec>
        {
            Burst(options, "noop-cpu", N(10_000)) with { Name = "noop-cpu-burst", Batch = batch, Connections = 8 },
            Burst(options, "noop-io", N(10_000)) with { Name = "noop-io-burst", Batch = batch, Connections = 8 },
            Burst(options, "noop-cpu", N(10_000)) with { Name = "noop-cpu-single", Batch = 1, Connections = 16 },
            Burst(options, "cpu", N(10_000)) with { Name = "cpu-burst", Batch = batch, Connections = 8 },
            Burst(options, "io", N(2_000)) with { Name = "io-burst", Batch = batch, Connections = 8 },
            Burst(options, "noop-cpu", N(100_000)) with { Name = "ingest-cpu", Batch = quick ? 100 : 1000, Connections = 8 },
            Burst(options, "noop-io", N(100_000)) with { Name = "ingest-io", Batch = quick ? 100 : 1000, Connections = 8 },
        };
        foreach (var spec in specs)
        {
            // Each burst is measured on a warmed system, like the ceiling it is judged against: an unreported burst of
            // the same workload and shape runs first. The first webhook burst after a start spent most of the
            // receiver's and the API's CPU compiling their request paths (docs/benchmarks.md, Session 5: I/O lane).
            var warmup = SuiteWarmup(spec.Name, quick);
            if (warmup > 0)
            {
                log.WriteLine($"[warmup] {spec.Name}: {warmup} events of the same workload, not reported …");
                await runner.RunAsync(spec with { Name = spec.Name + "-warmup", Events = warmup }, Path.GetTempPath(), "warmup", cancellationToken);
            }

            run.Scenarios.Add(await runner.RunAsync(spec, options.OutDirectory, label, cancellationToken) with { Warmup = warmup });
        }
    }

    /// <summary>
    /// Events of the unreported warm-up before each suite burst: enough for the services' JIT and connection pools to
    /// settle. The 100,000-event ingest scenarios follow bursts of their own workload, which warm them.
    /// </summary>
    public static int SuiteWarmup(string scenario, bool quick) => scenario switch
    {
        "noop-cpu-burst" or "noop-io-burst" or "noop-cpu-single" => quick ? 20 : 2_000,
        "cpu-burst" => quick ? 10 : 400,
        "io-burst" => quick ? 20 : 1_000,
        _ => 0,
    };

    private const int CeilingWarmupRounds = 2;

    private static bool RunsPbkdf2(BenchOptions o) =>
        o.Iterations > 0 && (o.Command == "suite" || (o.Command is "burst" or "steady" && o.WorkloadName == "cpu"));

    /// <summary>Copies the run's ceiling into each PBKDF2 scenario and rates the scenario against it.</summary>
    public static void ApplyCeiling(BenchRun run)
    {
        if (run.Ceiling is not { } ceiling)
        {
            return;
        }

        for (var i = 0; i < run.Scenarios.Count; i++)
        {
            var s = run.Scenarios[i];
            if (s.EventType == "hash.pbkdf2" && s.Iterations == ceiling.Iterations)
            {
                run.Scenarios[i] = s with
                {
                    Ceiling = ceiling,
                    CeilingRatio = s.EndToEndRate is { } e ? Math.Round(e / ceiling.EventsPerSecond, 3) : null,
                };
            }
        }
    }

    /// <summary>Judges the targets again and rewrites the markdown of an earlier run from its JSON (no system needed).</summary>
    private static int Rerender(BenchOptions options, TextWriter output)
    {
        var path = options.From ?? throw new UsageException("report needs --from <run>.json");
        var json = new System.Text.Json.JsonSerializerOptions(ReportWriter.Json)
        {
            PreferredObjectCreationHandling = System.Text.Json.Serialization.JsonObjectCreationHandling.Populate,
        };
        var run = System.Text.Json.JsonSerializer.Deserialize<BenchRun>(File.ReadAllText(path), json)
            ?? throw new UsageException($"{path} holds no run");
        if (run.Targets.Count > 0)
        {
            run.Targets.Clear();
            run.Targets.AddRange(TargetJudge.Judge(run));
        }

        var (written, markdown) = ReportWriter.Write(run, Path.GetDirectoryName(Path.GetFullPath(path))!);
        output.WriteLine($"written: {written}, {markdown}");
        return 0;
    }

    private static async Task<IdleResult> IdleAsync(PipelineTarget target, double seconds, TextWriter log, CancellationToken cancellationToken)
    {
        log.WriteLine($"[idle] {seconds:F0} s with no load: CPU of each service …");
        await using var sampler = new ProcessSampler(target.RootPids, TimeSpan.FromMilliseconds(500));
        sampler.Start();
        await Task.Delay(TimeSpan.FromSeconds(seconds), cancellationToken);
        return new IdleResult(seconds, await sampler.StopAsync());
    }

    private static ScenarioSpec Burst(BenchOptions o, string workload, int count) =>
        new($"burst-{workload}-{count}", "burst", Workload.Parse(workload, o.Iterations, o.DelayMs), count, o.Batch, o.Connections);

    private static ScenarioSpec Steady(BenchOptions o, string workload, double rate, double seconds, int batch) =>
        new($"steady-{workload}-{rate.ToString(CultureInfo.InvariantCulture)}ps", "steady", Workload.Parse(workload, o.Iterations, o.DelayMs),
            (int)Math.Round(rate * seconds), batch, Math.Max(o.Connections, 1), rate, seconds);

    private static string DefaultLabel(BenchOptions o) => o.Command switch
    {
        "burst" => $"burst-{o.WorkloadName}-{o.Count}-b{o.Batch}-c{o.Connections}",
        "steady" => $"steady-{o.WorkloadName}-{o.Rate.ToString(CultureInfo.InvariantCulture)}ps-{o.DurationSeconds.ToString(CultureInfo.InvariantCulture)}s",
        "suite" => o.Quick ? "suite-quick" : "suite",
        _ => o.Command,
    };

    private static HttpClient CreateClient(Uri baseAddress, int connections, string? apiKey)
    {
        var handler = new SocketsHttpHandler
        {
            MaxConnectionsPerServer = Math.Max(connections, 2) + 2, // + the lane sampler's
            PooledConnectionLifetime = Timeout.InfiniteTimeSpan,
            AutomaticDecompression = DecompressionMethods.None,
            UseProxy = false,
            // Per request, a cookie container would be asked for a Cookie header and each answer checked for
            // Set-Cookie, and trace headers injected: the API sets no cookies and the bench traces nothing.
            UseCookies = false,
            ActivityHeadersPropagator = null,
        };
        var client = new HttpClient(handler) { BaseAddress = baseAddress, Timeout = TimeSpan.FromSeconds(60) };
        if (apiKey is not null)
        {
            client.DefaultRequestHeaders.Add("X-Api-Key", apiKey);
        }

        return client;
    }

    private static string BuildConfiguration() =>
        typeof(BenchApp).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "unknown";

    private static string Quote(string arg) => arg.Contains(' ', StringComparison.Ordinal) ? $"'{arg}'" : arg;
}
