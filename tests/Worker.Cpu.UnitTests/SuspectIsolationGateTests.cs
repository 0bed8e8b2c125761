using EventPipeline.Worker.Cpu.Lane;
using Microsoft.Extensions.Options;

namespace EventPipeline.Worker.Cpu.UnitTests;

public sealed class SuspectIsolationGateTests
{
    private static LaneEntry Entry(long unfinishedRuns) =>
        new("1-0", "id", "noop.cpu", "{}", DateTimeOffset.UtcNow, 1, [], "[]") { UnfinishedRuns = unfinishedRuns };

    [Fact]
    public async Task Suspect_waits_until_nothing_else_runs_and_nothing_starts_beside_it()
    {
        var gate = new SuspectIsolationGate(Options.Create(new CpuLaneOptions { Handlers = 3 }));
        var first = await gate.EnterAsync(Entry(0));
        var second = await gate.EnterAsync(Entry(0));

        var suspect = gate.EnterAsync(Entry(1));
        Assert.False(suspect.IsCompleted);
        await first.DisposeAsync();
        Assert.False(suspect.IsCompleted);
        await second.DisposeAsync();
        var alone = await suspect.WaitAsync(TimeSpan.FromSeconds(10));

        var ordinary = gate.EnterAsync(Entry(0));
        Assert.False(ordinary.IsCompleted);
        await alone.DisposeAsync();
        await (await ordinary.WaitAsync(TimeSpan.FromSeconds(10))).DisposeAsync();
    }
}
