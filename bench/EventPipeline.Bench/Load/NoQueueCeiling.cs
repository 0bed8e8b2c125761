using System.Diagnostics;
using EventPipeline.Bench.Report;
using EventPipeline.Bench.Workloads;

namespace EventPipeline.Bench.Load;

/// <summary>
/// The CPU workload's handler called directly on every core, with the same ids and data the pipeline gets: the rate
/// the CPU lane would reach if queueing, status writes and HTTP cost nothing.
/// </summary>
public static class NoQueueCeiling
{
    public static CeilingResult Measure(Workload workload, IReadOnlyList<string> ids)
    {
        var threads = Environment.ProcessorCount;
        // Warm up (JIT, the crypto provider) outside the timed part.
        Workload.Pbkdf2(ids[0], workload.Data(ids[0]), workload.Iterations);
        var data = ids.Select(workload.Data).ToArray();
        var clock = Stopwatch.StartNew();
        Parallel.For(0, ids.Count, new ParallelOptions { MaxDegreeOfParallelism = threads },
            i => Workload.Pbkdf2(ids[i], data[i], workload.Iterations));
        var seconds = clock.Elapsed.TotalSeconds;
        return new CeilingResult(ids.Count, threads, Math.Round(seconds, 3), Math.Round(ids.Count / seconds, 1));
    }
}
