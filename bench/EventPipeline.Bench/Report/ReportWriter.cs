using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace EventPipeline.Bench.Report;

/// <summary>Writes a run as <c>&lt;label&gt;.json</c> (everything, samples included) and <c>&lt;label&gt;.md</c> (the tables).</summary>
public static class ReportWriter
{
    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    public static (string Json, string Markdown) Write(BenchRun run, string directory)
    {
        Directory.CreateDirectory(directory);
        var json = Path.Combine(directory, $"{run.Label}.json");
        var markdown = Path.Combine(directory, $"{run.Label}.md");
        File.WriteAllText(json, JsonSerializer.Serialize(run, Json));
        File.WriteAllText(markdown, Markdown(run));
        return (json, markdown);
    }

    public static string Markdown(BenchRun run)
    {
        var md = new StringBuilder();
        var m = run.Machine;
        md.AppendLine(CultureInfo.InvariantCulture, $"## {run.Label}").AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"`{run.CommandLine}`").AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"{run.StartedAt:yyyy-MM-dd HH:mm} UTC · {m.Cores} cores ({m.CpuModel}) · {m.MemoryGb} GB · load average {m.LoadAverageBefore} before, {m.LoadAverageAfter} after · services built {m.Configuration} · target: {run.Target}").AppendLine();

        if (run.Targets.Count > 0)
        {
            md.AppendLine("| target | measured | met |").AppendLine("|---|---|---|");
            foreach (var t in run.Targets)
            {
                md.AppendLine(CultureInfo.InvariantCulture, $"| {t.Target} | {t.Measured} | {(t.Met switch { true => "✅ met", false => "❌ not met", null => "— (see measured)" })} |");
            }

            md.AppendLine();
        }

        md.AppendLine("| scenario | events | warm-up | batch × conns | accepted | enqueue /s | drain s | end-to-end /s | p50 ms | p95 ms | p99 ms | max ms | pickup p50 ms | lost | dup | ceiling /s | ratio |");
        md.AppendLine("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var s in run.Scenarios)
        {
            var mode = s.Mode == "steady" ? $"{s.Rate}/s × {s.DurationSeconds}s, " : "";
            md.AppendLine(CultureInfo.InvariantCulture,
                $"| {s.Name} | {s.Events} {s.EventType} | {(s.Warmup > 0 ? s.Warmup.ToString(CultureInfo.InvariantCulture) : "—")} | {mode}{s.Batch} × {s.Connections} | {s.Accepted} | {N(s.EnqueueRate)} | {N(s.DrainSeconds, "F2")} | {N(s.EndToEndRate)} | " +
                $"{N(s.Latency?.P50)} | {N(s.Latency?.P95)} | {N(s.Latency?.P99)} | {N(s.Latency?.Max)} | {N(s.Pickup?.P50)} | {s.Lost} | {(s.Duplicated?.ToString(CultureInfo.InvariantCulture) ?? "?")} | " +
                $"{N(s.Ceiling?.EventsPerSecond)} | {N(s.CeilingRatio, "P1")} |");
        }

        md.AppendLine();
        md.AppendLine("Memory (peak RSS sampled every 100 ms during the scenario; VmHWM = peak since the process started) and CPU (utime+stime over the scenario, % of one core):").AppendLine();
        var resources = run.Scenarios.SelectMany(s => s.Processes.Select(p => p.Resource)).Distinct().ToList();
        if (resources.Count > 0)
        {
            md.AppendLine("| scenario | " + string.Join(" | ", resources) + " |");
            md.AppendLine("|---|" + string.Concat(resources.Select(_ => "---:|")));
            foreach (var s in run.Scenarios)
            {
                md.Append(CultureInfo.InvariantCulture, $"| {s.Name} |");
                foreach (var r in resources)
                {
                    var p = s.Processes.FirstOrDefault(x => x.Resource == r);
                    md.Append(p is null ? " — |" : FormattableString.Invariant($" {p.PeakRssMb:F0} MB (HWM {p.HighWaterRssMb:F0}) · {p.CpuPercentOfOneCore:F0} % |"));
                }

                md.AppendLine();
            }

            md.AppendLine();
        }

        if (resources.Count > 0)
        {
            md.AppendLine("CPU time per event (utime+stime of each service over the scenario / accepted events, µs; \"all\" = the services together; the bench client separately):").AppendLine();
            md.AppendLine("| scenario | " + string.Join(" | ", resources) + " | all services | bench client | machine busy, % of a core | of it outside services and client |");
            md.AppendLine("|---|" + string.Concat(resources.Select(_ => "---:|")) + "---:|---:|---:|---:|");
            foreach (var s in run.Scenarios)
            {
                md.Append(CultureInfo.InvariantCulture, $"| {s.Name} |");
                foreach (var r in resources)
                {
                    md.Append(CultureInfo.InvariantCulture, $" {N(s.Processes.FirstOrDefault(x => x.Resource == r)?.CpuUsPerEvent)} |");
                }

                md.AppendLine(CultureInfo.InvariantCulture, $" **{N(s.CpuUsPerEvent)}** | {N(s.ClientCpuUsPerEvent)} | {N(s.MachineCpuPercentOfOneCore)} | {N(s.OtherCpuPercentOfOneCore)} |");
            }

            md.AppendLine();
        }

        if (run.Ceiling is { } c)
        {
            md.AppendLine(FormattableString.Invariant(
                $"No-queue ceiling (PBKDF2 at {c.Iterations} iterations on {c.Threads} threads, {c.WarmupRounds} warm-up rounds, then timed rounds of {c.Events} calls with the system not running): best {c.EventsPerSecond:F0}/s, median {c.Median:F0}/s, slowest {c.Min:F0}/s; before the system started {Join(c.Before)}, after it stopped {Join(c.After)}.")).AppendLine();
        }

        if (run.Idle is { } idle)
        {
            var each = string.Join(" · ", idle.Processes.Select(p => FormattableString.Invariant($"{p.Resource} {p.CpuPercentOfOneCore:F2} % CPU, {p.PeakRssMb:F0} MB")));
            md.AppendLine(CultureInfo.InvariantCulture, $"Idle, {idle.Seconds:F0} s with no load: {each}").AppendLine();
        }

        foreach (var s in run.Scenarios.Where(s => s.Chart is not null))
        {
            md.AppendLine(CultureInfo.InvariantCulture, $"![{s.Name}: queue depth and lag]({s.Chart})").AppendLine();
        }

        return md.ToString();
    }

    private static string Join(IReadOnlyList<double>? rates) =>
        rates is null ? "—" : string.Join(" / ", rates.Select(r => r.ToString("F0", CultureInfo.InvariantCulture)));

    private static string N(double? value, string format = "F0") =>
        value is { } v ? v.ToString(format, CultureInfo.InvariantCulture) : "—";
}
