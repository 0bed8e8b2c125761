using EventPipeline.Worker.Cpu.Lane;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace EventPipeline.Worker.Cpu.UnitTests;

public sealed class SuspectIsolationGateTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);

    private static LaneEntry Entry(long unfinishedRuns) =>
        new("1-0", "id", "noop.cpu", "{}", DateTimeOffset.UtcNow, 1, [], "[]") { UnfinishedRuns = unfinishedRuns };

    private static StartedBound Bound(int handlers, int maxStarted = 0) =>
        new(Options.Create(new CpuLaneOptions { Handlers = handlers, MaxStarted = maxStarted }), NullLogger<StartedBound>.Instance);

    [Fact]
    public async Task Suspect_waits_until_nothing_else_runs_and_nothing_starts_beside_it()
    {
        var gate = new SuspectIsolationGate(Bound(handlers: 3));
        var first = await gate.EnterAsync(Entry(0));
        var second = await gate.EnterAsync(Entry(0));

        var suspect = gate.EnterAsync(Entry(1)).AsTask();
        Assert.False(suspect.IsCompleted);
        await first.DisposeAsync();
        Assert.False(suspect.IsCompleted);
        await second.DisposeAsync();
        var alone = await suspect.WaitAsync(Wait);

        var ordinary = gate.EnterAsync(Entry(0)).AsTask();
        Assert.False(ordinary.IsCompleted);
        await alone.DisposeAsync();
        await (await ordinary.WaitAsync(Wait)).DisposeAsync();
    }

    [Fact]
    public async Task A_waiting_suspect_holds_back_ordinary_entries_that_came_after_it_even_with_room_under_the_bound()
    {
        var gate = new SuspectIsolationGate(Bound(handlers: 2));
        var running = await gate.EnterAsync(Entry(0));
        var suspect = gate.EnterAsync(Entry(2)).AsTask();
        var later = gate.EnterAsync(Entry(0)).AsTask(); // 1 of 16 inside: room, but behind the suspect
        Assert.False(suspect.IsCompleted);
        Assert.False(later.IsCompleted);

        await running.DisposeAsync();
        var alone = await suspect.WaitAsync(Wait);
        Assert.False(later.IsCompleted);
        Assert.Equal(1, gate.Inside);
        await alone.DisposeAsync();
        await (await later.WaitAsync(Wait)).DisposeAsync();
        Assert.Equal(0, gate.Inside);
    }

    [Fact]
    public async Task Entries_beyond_the_base_are_admitted_once_short_jobs_raise_the_bound()
    {
        var bound = Bound(handlers: 2);
        var gate = new SuspectIsolationGate(bound);
        var inside = new List<IAsyncDisposable>();
        for (var i = 0; i < 16; i++)
        {
            inside.Add(await gate.EnterAsync(Entry(0)));
        }

        var seventeenth = gate.EnterAsync(Entry(0)).AsTask();
        Assert.False(seventeenth.IsCompleted);
        bound.Observe(TimeSpan.FromMicroseconds(5));
        inside.Add(await seventeenth.WaitAsync(Wait));
        for (var i = 17; i < 64; i++)
        {
            var entered = gate.EnterAsync(Entry(0));
            Assert.True(entered.IsCompleted, $"entry {i + 1} of a bound of 64 waited");
            inside.Add(await entered);
        }

        var sixtyFifth = gate.EnterAsync(Entry(0)).AsTask();
        Assert.False(sixtyFifth.IsCompleted);
        await inside[0].DisposeAsync();
        inside[0] = await sixtyFifth.WaitAsync(Wait);
        foreach (var entry in inside)
        {
            await entry.DisposeAsync();
        }
    }

    [Fact]
    public async Task After_a_long_job_lowers_the_bound_nothing_enters_until_fewer_than_it_are_inside()
    {
        var bound = Bound(handlers: 2);
        var gate = new SuspectIsolationGate(bound);
        bound.Observe(TimeSpan.FromMicroseconds(5));
        var inside = new Stack<IAsyncDisposable>();
        for (var i = 0; i < 40; i++)
        {
            inside.Push(await gate.EnterAsync(Entry(0)));
        }

        bound.Observe(TimeSpan.FromMilliseconds(4.5)); // PBKDF2 at 20,000 iterations
        Assert.Equal(16, bound.Current);
        var next = gate.EnterAsync(Entry(0)).AsTask();
        while (inside.Count > 16)
        {
            Assert.False(next.IsCompleted, $"admitted with {gate.Inside} inside, bound 16");
            await inside.Pop().DisposeAsync();
        }

        Assert.False(next.IsCompleted);
        await inside.Pop().DisposeAsync();
        inside.Push(await next.WaitAsync(Wait));
        Assert.Equal(16, gate.Inside);
        while (inside.Count > 0)
        {
            await inside.Pop().DisposeAsync();
        }
    }

    [Fact]
    public async Task A_fixed_bound_admits_exactly_that_many()
    {
        var bound = Bound(handlers: 2, maxStarted: 3);
        var gate = new SuspectIsolationGate(bound);
        var inside = new[] { await gate.EnterAsync(Entry(0)), await gate.EnterAsync(Entry(0)), await gate.EnterAsync(Entry(0)) };
        bound.Observe(TimeSpan.FromMicroseconds(1));
        var fourth = gate.EnterAsync(Entry(0)).AsTask();
        Assert.False(fourth.IsCompleted);
        await inside[1].DisposeAsync();
        await (await fourth.WaitAsync(Wait)).DisposeAsync();
        await inside[0].DisposeAsync();
        await inside[2].DisposeAsync();
    }
}
