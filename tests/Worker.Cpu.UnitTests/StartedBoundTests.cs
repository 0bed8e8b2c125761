using EventPipeline.Worker.Cpu.Lane;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace EventPipeline.Worker.Cpu.UnitTests;

/// <summary>
/// The started bound's decisions (Worker.Cpu/Lane/StartedBound.cs): by default it rises above 8 × Handlers, up to
/// 32 ×, only while the jobs are short enough that what a crash leaves to run alone (2 × the bound) stays within
/// StartedWorkBudget of compute; an explicit MaxStarted is a fixed bound.
/// </summary>
public sealed class StartedBoundTests
{
    private static readonly TimeSpan Noop = TimeSpan.FromMicroseconds(5);
    private static readonly TimeSpan Pbkdf2TenThousand = TimeSpan.FromMilliseconds(2.25); // measured on these 2-core machines
    private static readonly TimeSpan Pbkdf2TwentyThousand = TimeSpan.FromMilliseconds(4.5);

    private static StartedBound Bound(int handlers = 2, int maxStarted = 0, TimeSpan? budget = null) =>
        new(Options.Create(new CpuLaneOptions { Handlers = handlers, MaxStarted = maxStarted, StartedWorkBudget = budget ?? TimeSpan.FromMilliseconds(5) }),
            NullLogger<StartedBound>.Instance);

    [Fact]
    public void Default_starts_at_eight_per_handler_before_any_job_is_measured_and_may_reach_thirty_two()
    {
        var bound = Bound(handlers: 2);
        Assert.True(bound.IsAdaptive);
        Assert.Equal((16, 64, 16, 32), (bound.Base, bound.Ceiling, bound.Current, bound.ActiveHandlers));
        Assert.Null(bound.Estimate);
    }

    [Fact]
    public void An_explicit_MaxStarted_is_a_fixed_bound_whatever_the_jobs()
    {
        var bound = Bound(handlers: 2, maxStarted: 64);
        Assert.False(bound.IsAdaptive);
        Assert.Equal((64, 64, 64), (bound.Base, bound.Ceiling, bound.Current));
        bound.Observe(Pbkdf2TwentyThousand);
        Assert.Equal(64, bound.Current);

        var small = Bound(handlers: 2, maxStarted: 4);
        for (var i = 0; i < 100; i++)
        {
            small.Observe(Noop);
        }

        Assert.Equal(4, small.Current);
    }

    [Fact]
    public void Short_jobs_raise_it_to_the_ceiling()
    {
        var bound = Bound(handlers: 2);
        bound.Observe(Noop);
        Assert.Equal(64, bound.Current);
        Assert.Equal(128, bound.ActiveHandlers);
    }

    [Theory]
    [InlineData(2.25)]
    [InlineData(4.5)]
    [InlineData(45)]
    public void Long_jobs_keep_it_at_the_base(double milliseconds)
    {
        var bound = Bound(handlers: 2);
        for (var i = 0; i < 200; i++)
        {
            bound.Observe(TimeSpan.FromMilliseconds(milliseconds));
            Assert.Equal(16, bound.Current);
        }
    }

    [Fact]
    public void One_long_job_among_short_ones_lowers_it_at_once_and_short_jobs_raise_it_again_within_a_few_dozen()
    {
        var bound = Bound(handlers: 2);
        for (var i = 0; i < 50; i++)
        {
            bound.Observe(Noop);
        }

        Assert.Equal(64, bound.Current);
        bound.Observe(Pbkdf2TenThousand);
        Assert.Equal(16, bound.Current);

        var jobs = 0;
        while (bound.Current < 64)
        {
            bound.Observe(Noop);
            Assert.True(++jobs <= 30, $"still {bound.Current} after {jobs} short jobs (estimate {bound.Estimate})");
        }
    }

    [Fact]
    public void What_a_crash_can_leave_charged_stays_within_the_budget_of_compute_above_the_base()
    {
        var budget = TimeSpan.FromMilliseconds(5);
        var bound = Bound(handlers: 2, budget: budget);
        foreach (var microseconds in new[] { 1, 20, 39, 40, 60, 100, 150, 156, 157, 300, 1000, 2250 })
        {
            var perJob = TimeSpan.FromMicroseconds(microseconds);
            var decided = bound.BoundFor(perJob);
            Assert.InRange(decided, 16, 64);
            if (decided > 16)
            {
                // Above the base only while 2 × bound jobs (taken up + successes being written) fit in the budget.
                Assert.True(2 * decided * perJob <= budget, $"{decided} jobs of {microseconds} µs: {2 * decided * perJob} of compute a crash could leave");
            }

            if (decided < 64)
            {
                // And as high as that allows.
                Assert.True(2 * (decided + 1) * perJob > budget, $"{microseconds} µs a job: {decided + 1} would have fit");
            }
        }

        Assert.Equal(25, bound.BoundFor(TimeSpan.FromMicroseconds(100)));
    }

    [Fact]
    public void A_zero_budget_keeps_it_at_the_base()
    {
        var bound = Bound(handlers: 2, budget: TimeSpan.Zero);
        Assert.False(bound.IsAdaptive);
        bound.Observe(TimeSpan.Zero);
        Assert.Equal(16, bound.Current);
    }

    [Fact]
    public void Many_handlers_cap_the_ceiling_at_4096_but_never_below_the_base()
    {
        Assert.Equal((1600, 4096), (Bound(handlers: 200).Base, Bound(handlers: 200).Ceiling));
        Assert.Equal((8192, 8192), (Bound(handlers: 1024).Base, Bound(handlers: 1024).Ceiling));
    }

    [Fact]
    public async Task A_raise_is_signalled_and_a_fall_is_not()
    {
        var bound = Bound(handlers: 2);
        var raisedEvents = 0;
        bound.Raised += () => raisedEvents++;
        var raise = bound.NextRaise;
        bound.Observe(Pbkdf2TenThousand);
        Assert.False(raise.IsCompleted);
        bound.Observe(Noop); // one short job does not undo a long one
        Assert.False(raise.IsCompleted);
        for (var i = 0; i < 40 && bound.Current == 16; i++)
        {
            bound.Observe(Noop);
        }

        await raise.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.True(raisedEvents > 0);
        var next = bound.NextRaise;
        Assert.NotSame(raise, next);
        bound.Observe(TimeSpan.FromMilliseconds(45));
        Assert.Equal(16, bound.Current);
        Assert.False(next.IsCompleted);
    }

    /// <summary>
    /// Jobs whose time jitters around a step of the bound (here 50–80 µs on 2 handlers: a bound near 36–41) do not raise
    /// it again and again: each raise wakes every parked handler, and raised one at a time it came on ~40 % of jobs
    /// (review of session 10, F1).
    /// </summary>
    [Fact]
    public void Jobs_jittering_around_a_step_do_not_raise_it_job_after_job()
    {
        var bound = Bound(handlers: 2);
        var raises = 0;
        bound.Raised += () => raises++;
        var random = new Random(16);
        const int jobs = 20_000;
        for (var i = 0; i < jobs; i++)
        {
            bound.Observe(TimeSpan.FromMicroseconds(50 + (random.NextDouble() * 30)));
        }

        Assert.InRange(bound.Current, bound.Base, bound.Ceiling);
        Assert.True(raises <= jobs / 200, $"{raises} raises of the bound in {jobs} jobs of 50-80 µs (now {bound.Current}): each wakes every parked handler");
    }

    [Fact]
    public void The_buffer_fills_to_twice_the_bound_in_force()
    {
        var options = Options.Create(new CpuLaneOptions { Handlers = 2 });
        var bound = new StartedBound(options, NullLogger<StartedBound>.Instance);
        var buffer = new LaneBuffer(options, bound);
        Assert.Equal((32, 32, 16), (buffer.Capacity, buffer.FreeSlots, buffer.ReadThreshold));
        bound.Observe(Noop);
        Assert.Equal((128, 128, 64), (buffer.Capacity, buffer.FreeSlots, buffer.ReadThreshold));
        bound.Observe(TimeSpan.FromMilliseconds(45));
        Assert.Equal((32, 32, 16), (buffer.Capacity, buffer.FreeSlots, buffer.ReadThreshold));
    }
}
