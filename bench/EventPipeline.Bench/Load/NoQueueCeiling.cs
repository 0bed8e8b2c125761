using System.Diagnostics;
using EventPipeline.Bench.Report;
using EventPipeline.Bench.Workloads;

namespace EventPipeline.Bench.Load;

/// <summary>
/// The CPU workload's handler called directly on one dedicated thread per core, with ids and data of the same shape the
/// pipeline gets: the rate the CPU lane would reach if queueing, status writes and HTTP cost nothing. Timed in a warmed
/// process (warm-up rounds first, their timings discarded) while the system under test is not running, so that neither
/// a cold start nor the pipeline's own load lowers it.
/// </summary>
public static class NoQueueCeiling
{
    /// <summary>Ids as long as the scenarios' (<c>bench-&lt;8 hex&gt;-&lt;7 digits&gt;</c>): the salt's length is part of the cost.</summary>
    private static string Id(int i) => $"bench-ceiling-{i:D7}";

    /// <summary>Runs <paramref name="warmupRounds"/> untimed rounds, then <paramref name="rounds"/> timed ones of <paramref name="calls"/> calls each.</summary>
    /// <returns>The events/s of each timed round.</returns>
    public static IReadOnlyList<double> Time(Workload workload, int calls, int rounds, int warmupRounds)
    {
        var threads = Environment.ProcessorCount;
        var ids = Enumerable.Range(0, calls).Select(Id).ToArray();
        var data = ids.Select(workload.Data).ToArray();
        for (var w = 0; w < warmupRounds; w++)
        {
            Round(workload, ids, data, threads);
        }

        var rates = new List<double>(rounds);
        for (var r = 0; r < rounds; r++)
        {
            rates.Add(Math.Round(calls / Round(workload, ids, data, threads).TotalSeconds, 1));
        }

        return rates;
    }

    /// <summary>
    /// One round on dedicated threads (not the thread pool, whose injection would be timed too), each taking the next
    /// call from a shared counter, as the lane's compute slots take the next entry.
    /// </summary>
    private static TimeSpan Round(Workload workload, string[] ids, string[] data, int threads)
    {
        var next = -1;
        using var start = new ManualResetEventSlim();
        var workers = Enumerable.Range(0, threads).Select(_ => new Thread(() =>
        {
            start.Wait();
            int i;
            while ((i = Interlocked.Increment(ref next)) < ids.Length)
            {
                Workload.Pbkdf2(ids[i], data[i], workload.Iterations);
            }
        }) { IsBackground = true }).ToList();
        workers.ForEach(t => t.Start());
        var clock = Stopwatch.StartNew();
        start.Set();
        workers.ForEach(t => t.Join());
        return clock.Elapsed;
    }
}
