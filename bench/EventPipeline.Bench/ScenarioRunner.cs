using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json.Serialization;
using EventPipeline.Bench.Load;
using EventPipeline.Bench.Observe;
using EventPipeline.Bench.Report;
using EventPipeline.Bench.Target;
using EventPipeline.Bench.Workloads;

namespace EventPipeline.Bench;

/// <summary>One measured run: <see cref="Events"/> events of one workload, as a burst or at a steady rate.</summary>
public sealed record ScenarioSpec(string Name, string Mode, Workload Workload, int Events, int Batch, int Connections, double? Rate = null, double? DurationSeconds = null);

/// <summary>
/// Runs a scenario against the target: submits, samples lanes and processes, waits for every accepted event to finish
/// (or the deadline), then reads what the pipeline recorded. The PBKDF2 ceiling is timed by the caller while the system
/// is not running (see <see cref="NoQueueCeiling"/>).
/// </summary>
public sealed class ScenarioRunner(PipelineTarget target, HttpClient api, HttpClient? downstream, IStatusReader statuses, TimeSpan deadline)
{
    private static readonly TimeSpan SampleEvery = TimeSpan.FromMilliseconds(100);

    public async Task<ScenarioResult> RunAsync(ScenarioSpec spec, string outDirectory, string filePrefix, CancellationToken cancellationToken)
    {
        var workload = spec.Workload;
        var tag = Guid.NewGuid().ToString("N")[..8];
        var ids = Enumerable.Range(0, spec.Events).Select(i => $"bench-{tag}-{i:D7}").ToArray();

        var submitter = new Submitter(api, workload, spec.Connections);
        var requests = submitter.Prepare(ids, spec.Batch);
        var waiter = new CompletionWaiter(statuses);
        var clock = Stopwatch.StartNew();
        var clientCpuAtStart = Process.GetCurrentProcess().TotalProcessorTime;
        var machineAtStart = ProcFs.MachineBusyTime();
        SubmitOutcome outcome;
        bool drained;
        IReadOnlyList<ProcessUsage> processes;
        TimeSpan clientCpu;
        TimeSpan? machineBusy;
        double measuredSeconds;
        IReadOnlyList<LaneSample> samples;
        int sampleFailures;
        await using (var lanes = new LaneSampler(api, SampleEvery))
        await using (var machines = new ProcessSampler(target.RootPids, SampleEvery))
        {
            lanes.Start(clock);
            machines.Start();
            await using (var progress = new ProgressLine(Console.Error, spec.Name, ids.Length, () => submitter.Submitted, () => waiter.Finished, () => lanes.Latest))
            {
                progress.Start(clock);
                outcome = spec.Mode == "steady"
                    ? await submitter.SteadyAsync(requests, ids.Length, spec.Rate!.Value / spec.Batch, cancellationToken)
                    : await submitter.BurstAsync(requests, ids.Length, cancellationToken);
                var accepted = ids.Where((_, i) => outcome.Accepted[i]).ToArray();
                drained = await waiter.WaitAsync(accepted, DateTimeOffset.UtcNow + deadline, cancellationToken);
                // A few more samples so the chart shows the lanes back at zero.
                await Task.Delay(TimeSpan.FromMilliseconds(300), cancellationToken);
            }

            processes = await machines.StopAsync();
            clientCpu = Process.GetCurrentProcess().TotalProcessorTime - clientCpuAtStart;
            machineBusy = ProcFs.MachineBusyTime() - machineAtStart;
            measuredSeconds = clock.Elapsed.TotalSeconds;
            samples = lanes.Samples;
            sampleFailures = lanes.Failures;
        }

        var acceptedIds = ids.Where((_, i) => outcome.Accepted[i]).ToArray();
        var records = await statuses.ReadAsync(acceptedIds, cancellationToken);
        var succeeded = records.Where(r => r?.State == "succeeded").Select(r => r!).ToList();
        var startMs = outcome.StartedAt.ToUnixTimeMilliseconds();
        var lastFinish = succeeded.Select(r => r.FinishedAt ?? 0).DefaultIfEmpty(0).Max();
        double? drainSeconds = succeeded.Count > 0 && lastFinish > 0 ? Math.Max(0.001, (lastFinish - startMs) / 1000.0) : null;
        var endToEnd = drainSeconds is { } d ? Math.Round(succeeded.Count / d, 1) : (double?)null;
        var (duplicated, duplicateSource) = await CountDuplicatesAsync(workload, acceptedIds, records, cancellationToken);

        double? PerEvent(double cpuSeconds) => acceptedIds.Length > 0 ? Math.Round(1e6 * cpuSeconds / acceptedIds.Length, 1) : null;
        processes = processes.Select(p => p with { CpuUsPerEvent = PerEvent(p.CpuSeconds) }).ToList();

        var chartName = $"{Sanitize(filePrefix)}-{Sanitize(spec.Name)}.png";
        DepthChart.Render(samples, $"{spec.Name}: {ids.Length} × {workload.EventType}", Path.Combine(outDirectory, chartName));

        return new ScenarioResult
        {
            Name = spec.Name,
            Mode = spec.Mode,
            Workload = workload.Name,
            EventType = workload.EventType,
            Lane = workload.Lane,
            Iterations = workload.RunsPbkdf2 ? workload.Iterations : 0,
            DelayMs = workload.DeliversDownstream ? workload.DelayMs : 0,
            Events = ids.Length,
            Batch = spec.Batch,
            Connections = spec.Connections,
            Rate = spec.Rate,
            DurationSeconds = spec.DurationSeconds,
            Requests = outcome.Requests,
            Accepted = acceptedIds.Length,
            Rejected = ids.Length - acceptedIds.Length,
            RejectedByStatus = outcome.Rejected.ToDictionary(kv => kv.Key == 0 ? "transport" : kv.Key.ToString(System.Globalization.CultureInfo.InvariantCulture), kv => kv.Value),
            Succeeded = succeeded.Count,
            Dead = records.Count(r => r?.State == "dead"),
            Lost = acceptedIds.Length - succeeded.Count,
            Duplicated = duplicated,
            DuplicateSource = duplicateSource,
            DrainedBeforeDeadline = drained,
            EnqueueSeconds = Math.Round(outcome.Elapsed.TotalSeconds, 3),
            EnqueueRate = outcome.Elapsed.TotalSeconds > 0 ? Math.Round(acceptedIds.Length / outcome.Elapsed.TotalSeconds, 1) : 0,
            DrainSeconds = drainSeconds is { } ds ? Math.Round(ds, 3) : null,
            EndToEndRate = endToEnd,
            Latency = LatencySummary.Of(succeeded.Where(r => r.AcceptedAt is not null && r.FinishedAt is not null).Select(r => (double)(r.FinishedAt!.Value - r.AcceptedAt!.Value))),
            Pickup = LatencySummary.Of(succeeded.Where(r => r.AcceptedAt is not null && r.StartedAt is not null).Select(r => (double)(r.StartedAt!.Value - r.AcceptedAt!.Value))),
            Processes = processes,
            CpuUsPerEvent = processes.Count > 0 ? PerEvent(processes.Sum(p => p.CpuSeconds)) : null,
            ClientCpuUsPerEvent = PerEvent(clientCpu.TotalSeconds),
            MachineCpuPercentOfOneCore = machineBusy is { } busy ? Math.Round(100 * busy.TotalSeconds / measuredSeconds, 1) : null,
            OtherCpuPercentOfOneCore = machineBusy is { } b && processes.Count > 0
                ? Math.Round(100 * (b.TotalSeconds - processes.Sum(p => p.CpuSeconds) - clientCpu.TotalSeconds) / measuredSeconds, 1)
                : null,
            PeakCpuDepth = samples.Select(s => s.CpuDepth).DefaultIfEmpty(0).Max(),
            PeakCpuLag = samples.Select(s => s.CpuLag).DefaultIfEmpty(0).Max(),
            PeakIoDepth = samples.Select(s => s.IoDepth).DefaultIfEmpty(0).Max(),
            LaneSampleFailures = sampleFailures,
            LaneSamples = samples,
            Chart = chartName,
        };
    }

    /// <summary>
    /// Work that ran to completion twice: for webhooks the receiver's count of 2xx deliveries per Idempotency-Key; for
    /// the rest the status field <c>completions</c> (incremented by each recorded success).
    /// </summary>
    private async Task<(int?, string)> CountDuplicatesAsync(Workload workload, IReadOnlyList<string> ids, EventRecord?[] records, CancellationToken cancellationToken)
    {
        if (workload.DeliversDownstream)
        {
            if (downstream is null)
            {
                return (null, "unknown (no --downstream)");
            }

            var duplicated = 0;
            await Parallel.ForAsync(0, ids.Count, new ParallelOptions { MaxDegreeOfParallelism = 16, CancellationToken = cancellationToken }, async (i, ct) =>
            {
                var received = await downstream.GetFromJsonAsync<ReceivedDto>($"/received/{Uri.EscapeDataString(ids[i])}", ct);
                if (received?.Count > 1)
                {
                    Interlocked.Increment(ref duplicated);
                }
            });
            return (duplicated, "receiver /received/{key} count > 1");
        }

        return statuses.KnowsCompletions
            ? (records.Count(r => r?.Completions > 1), "status field completions > 1")
            : (null, "unknown (no --redis)");
    }

    public static string Sanitize(string name) => string.Concat(name.Select(c => char.IsLetterOrDigit(c) || c is '-' or '_' ? c : '-'));

    private sealed record ReceivedDto([property: JsonPropertyName("count")] int Count);
}
