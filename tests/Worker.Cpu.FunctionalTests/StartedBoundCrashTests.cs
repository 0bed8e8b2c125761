using System.Diagnostics;
using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

/// <summary>
/// The adaptive started bound (Worker.Cpu/Lane/StartedBound.cs, docs/cpu-lane.md): with short jobs the default takes up
/// more than 8 × Handlers, and a crash then still leaves at most 2 × 32 × Handlers entries charged (taken up, or their
/// success not yet written), each of which runs alone in the consumer that claims it, every event succeeding once.
/// </summary>
[Collection(CpuLaneCollection.Name)]
public sealed class StartedBoundCrashTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task Crash_in_a_noop_backlog_at_the_adaptive_default_leaves_at_most_the_documented_suspects_each_run_alone_and_every_event_succeeds_once()
    {
        const int handlers = 2;
        const int fixedDefaultMostCharged = 2 * 8 * handlers; // what the old default (MaxStarted 8 × Handlers, 2 × that many handlers) could ever hold charged
        const int documentedMostCharged = 2 * 32 * handlers;
        var settings = new Dictionary<string, string?> { ["CpuLane__Handlers"] = handlers.ToString() }; // MaxStarted left at its default
        await using var lane = await CpuLaneHarness.StartAsync();
        var ids = Enumerable.Range(0, 12_000).Select(i => $"noop-{i}-{Guid.NewGuid():N}").ToArray();
        foreach (var chunk in ids.Chunk(2_000))
        {
            await lane.EnqueueAsync([.. chunk.Select(id => (id, "noop.cpu", (object)new { data = Bursts.DataOf(id) }))]);
        }

        var first = await lane.StartWorkerAsync(settings);

        // Kill -9 once the worker holds more entries charged than the old default could: the bound really rose.
        var most = 0L;
        var watch = Stopwatch.StartNew();
        while (true)
        {
            var charged = await lane.Db.HashLengthAsync(CpuLaneStreams.Started);
            most = Math.Max(most, charged);
            if (charged > fixedDefaultMostCharged)
            {
                await first.KillAsync();
                break;
            }

            Assert.True(watch.Elapsed < Patience && await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream) > 0,
                $"the worker never held more than {most} entries charged (the old default's most is {fixedDefaultMostCharged})");
            await Task.Delay(1);
        }

        var suspects = (await lane.Db.HashGetAllAsync(CpuLaneStreams.Started)).ToDictionary(e => e.Name.ToString(), e => (long)e.Value);
        var left = await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream);
        output.WriteLine($"killed {first.Pid}: {suspects.Count} entries charged (suspects), {left} entries left in the stream");
        Assert.InRange(suspects.Count, 1, documentedMostCharged);
        Assert.All(suspects.Values, runs => Assert.Equal(1, runs));

        // The next consumer claims them and runs each alone.
        await using var monitor = await RedisMonitor.StartAsync(lane.Redis);
        var second = await lane.StartWorkerAsync(settings);
        await Eventually.TrueAsync(async () => await lane.CountInStateAsync(ids, "succeeded") == ids.Length, Patience,
            "every event to succeed after the crash", TimeSpan.FromMilliseconds(200));
        await Eventually.TrueAsync(async () => await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream) == 0, Patience,
            "every entry to be acknowledged");
        var through = await monitor.CountThroughNowAsync(lane.Db);

        // The log lines come through the process's stdout pipe, which may trail the acknowledgements read above.
        string[] Alone() => [.. second.Output.Where(line => line.Contains("running it alone", StringComparison.Ordinal))];
        await Eventually.TrueAsync(() => Task.FromResult(Alone().Length >= suspects.Count), TimeSpan.FromSeconds(30),
            $"the second worker to log each of the {suspects.Count} suspects as run alone", TimeSpan.FromMilliseconds(100));
        var alone = Alone();
        Assert.Equal(suspects.Count, alone.Length);
        Assert.All(suspects.Keys, entry => Assert.Contains(alone, line => line.Contains($"entry {entry}", StringComparison.Ordinal)));

        // Each suspect was charged its second run by a script that charged nothing else: nothing was taken up beside it.
        var scripts = ScriptsOf(monitor.Lines.Take(through));
        var started = $"\"HINCRBY\" \"{CpuLaneStreams.Started}\" ";
        foreach (var entry in suspects.Keys)
        {
            var charging = scripts.Where(s => s.Any(c => c.Contains($"{started}\"{entry}\" \"1\"", StringComparison.Ordinal))).ToArray();
            var script = Assert.Single(charging);
            Assert.Equal(1, script.Count(c => c.Contains(started, StringComparison.Ordinal)));
        }

        var outcomes = await lane.StatesAsync(ids);
        Assert.Equal([], outcomes.Where(o => o.Value.Completions != 1).Select(o => $"{o.Key}: {o.Value.Completions} completions"));
        Assert.Empty(await lane.DeadLettersAsync());
        Assert.Equal(0, await lane.Db.HashLengthAsync(CpuLaneStreams.Started));
    }

    /// <summary>The commands each script ran (MONITOR shows a script's commands as <c>[0 lua]</c> lines after the client's EVALSHA).</summary>
    private static List<List<string>> ScriptsOf(IEnumerable<string> lines)
    {
        var scripts = new List<List<string>>();
        List<string>? current = null;
        foreach (var line in lines)
        {
            if (line.Contains(" lua] ", StringComparison.Ordinal))
            {
                current?.Add(line);
            }
            else
            {
                current = line.Contains("\"EVALSHA\"", StringComparison.OrdinalIgnoreCase) || line.Contains("\"EVAL\"", StringComparison.OrdinalIgnoreCase) ? [] : null;
                if (current is not null)
                {
                    scripts.Add(current);
                }
            }
        }

        return scripts;
    }
}
