using System.Globalization;

namespace EventPipeline.Bench.Report;

/// <summary>The targets of issue 16 (which raised those of issue 9), each judged from the suite's scenarios. Reported in the results; tests never assert them.</summary>
public static class TargetJudge
{
    /// <summary>"The broker's memory bounded" has no number in the issue: judged here as under 1 GiB through a 100,000 burst.</summary>
    public const double BrokerBoundMb = 1024;

    public const double ServiceRssLimitMb = 200;

    /// <summary>Issue 16: each worker idles under half a core-percent.</summary>
    public const double IdleCpuPercentLimit = 0.5;

    public static IEnumerable<TargetVerdict> Judge(BenchRun run)
    {
        ScenarioResult? S(string name) => run.Scenarios.FirstOrDefault(s => s.Name == name);

        foreach (var (name, lane, goal) in new[] { ("noop-cpu-burst", "Redis", 15_000.0), ("noop-io-burst", "RabbitMQ", 12_000.0) })
        {
            if (S(name) is { } s)
            {
                yield return new($"noop burst {s.Events} (batch {s.Batch}), HTTP ingest included, ≥ {goal:N0} events/s end to end on the {lane} lane",
                    $"{F(s.EndToEndRate)} events/s (lost {s.Lost}; {F(s.CpuUsPerEvent)} µs CPU/event)", s.EndToEndRate >= goal && s.Lost == 0);
            }
        }

        if (S("noop-cpu-single") is { } single)
        {
            yield return new($"noop burst {single.Events} as single POSTs over {single.Connections} connections ≥ 10,000 events/s end to end, Redis lane",
                $"{F(single.EndToEndRate)} events/s end to end, enqueue {F(single.EnqueueRate)}/s ({F(single.CpuUsPerEvent)} µs CPU/event)", single.EndToEndRate >= 10_000 && single.Lost == 0);
        }

        if (S("cpu-burst") is { } cpu)
        {
            // Above 105 % the lane beat its own ceiling: the machine's load changed between the timings, so the ratio
            // says nothing either way.
            var inconclusive = cpu.CeilingRatio > 1.05;
            yield return new($"cpu burst {cpu.Events} at {cpu.Iterations} iterations ≥ 95 % of the warmed no-queue ceiling",
                $"{F(cpu.EndToEndRate)} events/s vs ceiling {F(cpu.Ceiling?.EventsPerSecond)} /s (rounds {F(cpu.Ceiling?.Min)}–{F(cpu.Ceiling?.EventsPerSecond)}) = {P(cpu.CeilingRatio)}" +
                (inconclusive ? " — inconclusive: the lane beat its ceiling, so the machine's load changed between the timings" : ""),
                inconclusive ? null : cpu.CeilingRatio >= 0.95 && cpu.Lost == 0);
        }

        if (S("io-burst") is { } io)
        {
            yield return new($"io burst {io.Events} at {io.DelayMs} ms ≥ 4,000 events/s, p99 < 400 ms",
                $"{F(io.EndToEndRate)} events/s, p99 {F(io.Latency?.P99)} ms", io.EndToEndRate >= 4_000 && io.Latency?.P99 < 400 && io.Lost == 0);
        }

        foreach (var (name, lane, goal) in new[] { ("ingest-cpu", "Redis", 30_000.0), ("ingest-io", "RabbitMQ", 15_000.0) })
        {
            if (S(name) is { } s)
            {
                yield return new($"batch ingest ≥ {goal:N0} events/s accepted durably on the {lane} lane ({s.Events} events, batch {s.Batch} × {s.Connections} connections)",
                    $"{F(s.EnqueueRate)} events/s accepted (rejected {s.Rejected})", s.EnqueueRate >= goal && s.Rejected == 0);
            }
        }

        if (run.Idle is { } idle)
        {
            foreach (var worker in idle.Processes.Where(p => p.Resource.StartsWith("worker-", StringComparison.Ordinal)))
            {
                yield return new($"idle: {worker.Resource} < {IdleCpuPercentLimit} % CPU", $"{worker.CpuPercentOfOneCore.ToString("F2", CultureInfo.InvariantCulture)} % over {idle.Seconds:F0} s", worker.CpuPercentOfOneCore < IdleCpuPercentLimit);
            }
        }

        foreach (var name in new[] { "pickup-cpu", "pickup-io" })
        {
            if (S(name) is { } s)
            {
                yield return new($"idle: pickup p50 < 5 ms ({s.Lane} lane, {s.Rate}/s single events)", $"p50 {F(s.Pickup?.P50)} ms (p95 {F(s.Pickup?.P95)} ms)", s.Pickup?.P50 < 5);
            }
        }

        var big = run.Scenarios.Where(s => s.Name is "ingest-cpu" or "ingest-io").ToList();
        if (big.Count > 0)
        {
            var events = big.Max(s => s.Events);
            foreach (var resource in new[] { "producer-api", "worker-cpu", "worker-io", "downstream" })
            {
                var peak = big.SelectMany(s => s.Processes).Where(p => p.Resource == resource).Select(p => p.PeakRssMb).DefaultIfEmpty(-1).Max();
                yield return new($"memory: {resource} < {ServiceRssLimitMb:F0} MB RSS through a {events:N0} burst", peak < 0 ? "not measured" : $"peak {peak:F0} MB", peak < 0 ? null : peak < ServiceRssLimitMb);
            }

            foreach (var broker in new[] { "redis", "rabbitmq" })
            {
                var peak = big.SelectMany(s => s.Processes).Where(p => p.Resource == broker).Select(p => p.PeakRssMb).DefaultIfEmpty(-1).Max();
                yield return new($"memory: {broker} bounded (< {BrokerBoundMb:F0} MB) through a {events:N0} burst", peak < 0 ? "not measured" : $"peak {peak:F0} MB", peak < 0 ? null : peak < BrokerBoundMb);
            }
        }
    }

    private static string F(double? value) => value is { } v ? v.ToString("N0", CultureInfo.InvariantCulture) : "—";

    private static string P(double? value) => value is { } v ? v.ToString("P1", CultureInfo.InvariantCulture) : "—";
}
