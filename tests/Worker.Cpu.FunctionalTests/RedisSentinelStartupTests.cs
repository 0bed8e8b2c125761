using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

/// <summary>
/// A Worker.Cpu that starts while the Sentinel in front of its Redis does not answer (SIGSTOPped, always resumed): it
/// must stay up, take no entry, and process every entry once the Sentinel answers — without a restart. Aspire's client
/// connected synchronously at host start and StackExchange.Redis's Sentinel connect threw ("Detected as: Standalone"):
/// the worker exited (4.6 s after start, s9-replica's diagnostic) and under the AppHost stayed down.
/// </summary>
[Collection(CpuLaneCollection.Name)]
public sealed class RedisSentinelStartupTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Worker_started_while_its_sentinel_does_not_answer_stays_up_takes_nothing_and_processes_every_entry_once_it_does()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        var ids = Enumerable.Range(0, 20).Select(_ => Guid.NewGuid().ToString("N")).ToArray();
        await lane.EnqueueAsync([.. ids.Select(id => (id, "noop.cpu", (object)new { }))]);
        // One Sentinel watching the harness's Redis (quorum 1): the discovery path the cluster AppHost's workers take.
        await using var sentinel = await LoneSentinel.StartAsync(lane.Redis, "ep-cpu");
        ChildProcess worker;
        await using (var pause = ProcessPause.Of(sentinel.Pid))
        {
            worker = await lane.StartWorkerAsync(new Dictionary<string, string?>
            {
                // A short connect timeout only so that attempts fail quickly; the failure is the same at the defaults.
                ["ConnectionStrings__redis"] = sentinel.ConnectionString + ",connectTimeout=1000,connectRetry=1",
            }, waitUntilReady: false);
            await Eventually.TrueAsync(() => Task.FromResult(worker.HasExited || FailedAttempts(worker) >= 2), Deadline,
                "Worker.Cpu's second failed connect, or its exit", TimeSpan.FromMilliseconds(100));
            Assert.False(worker.HasExited, "Worker.Cpu exited at start while its Sentinel did not answer:\n" +
                string.Join('\n', worker.Output.Where(l => !l.StartsWith("   ", StringComparison.Ordinal)).TakeLast(10)));
            var states = await lane.StatesAsync(ids);
            Assert.True(states.Values.All(s => s.State == "accepted"),
                "Worker.Cpu took entries while its Redis was not connected: " + string.Join(", ", states.Values.Select(s => s.State).Distinct()));
        }

        await Eventually.TrueAsync(async () => worker.HasExited || await lane.CountInStateAsync(ids, "succeeded") == ids.Length, Deadline,
            "every entry to succeed once the Sentinel answers", TimeSpan.FromMilliseconds(200));
        Assert.False(worker.HasExited, "Worker.Cpu exited:\n" + string.Join('\n', worker.Output.TakeLast(10)));
        Assert.All((await lane.StatesAsync(ids)).Values, s => Assert.Equal(1, s.Completions));
        output.WriteLine(string.Join('\n', worker.Output.Where(l => l.Contains("through Sentinel", StringComparison.Ordinal)).Take(5)));
    }

    private static int FailedAttempts(ChildProcess worker) =>
        worker.Output.Count(l => l.Contains("not reachable through Sentinel", StringComparison.Ordinal));
}
