using EventPipeline.Worker.Cpu.Lane;
using Microsoft.Extensions.Options;

namespace EventPipeline.Worker.Cpu.UnitTests;

public sealed class RetryBackoffTests
{
    private static RetryScheduler Scheduler(TimeSpan baseDelay, TimeSpan maxDelay) =>
        new(null!, null!, Options.Create(new CpuLaneOptions { RetryBaseDelay = baseDelay, RetryMaxDelay = maxDelay }));

    [Theory]
    [InlineData(2, 1000)]
    [InlineData(3, 2000)]
    [InlineData(4, 4000)]
    [InlineData(5, 8000)]
    public void Delay_before_an_attempt_doubles_and_is_jittered_in_its_upper_half(int attempt, int ceilingMs)
    {
        var scheduler = Scheduler(TimeSpan.FromSeconds(1), TimeSpan.FromMinutes(1));
        var delays = Enumerable.Range(0, 500).Select(_ => scheduler.DelayBefore(attempt).TotalMilliseconds).ToList();

        Assert.All(delays, d => Assert.InRange(d, ceilingMs / 2.0, ceilingMs));
        Assert.True(delays.Distinct().Count() > 100, "no jitter: every retry of a burst would fire at the same moment");
    }

    [Fact]
    public void Delay_never_exceeds_the_configured_maximum()
    {
        var scheduler = Scheduler(TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(5));

        Assert.All(Enumerable.Range(2, 40), attempt => Assert.InRange(scheduler.DelayBefore(attempt).TotalMilliseconds, 500, 5000));
        // From the attempt where 2^n passes the cap on, the delay stays at the cap (jittered in its upper half).
        Assert.All(Enumerable.Range(5, 40), attempt => Assert.InRange(scheduler.DelayBefore(attempt).TotalMilliseconds, 2500, 5000));
    }
}
