using EventPipeline.Testing;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;

/// <summary>
/// Where "now" is in a <see cref="RedisMonitor"/>'s feed. <c>monitor.Lines.Count</c> right after a write returned is
/// not that: MONITOR's feed is a separate socket the test reads on its own thread, so on a loaded machine the lines of
/// a write already answered can still be on their way (a CI run counted 34 events' enqueue — HMGET, HSET, EXPIRE of
/// the accept script — as the lane's). A marker sent now is fed after everything Redis ran before it.
/// </summary>
public static class MonitorMarks
{
    /// <summary>The number of lines up to and including a marker sent now: everything Redis ran before this call.</summary>
    public static async Task<int> CountThroughNowAsync(this RedisMonitor monitor, IDatabase db)
    {
        var marker = "monitor-mark-" + Guid.NewGuid().ToString("N");
        await db.StringGetAsync(marker);
        var through = 0;
        await Eventually.TrueAsync(() =>
        {
            var seen = 0;
            foreach (var line in monitor.Lines)
            {
                seen++;
                if (line.Contains(marker, StringComparison.Ordinal))
                {
                    through = seen;
                    return Task.FromResult(true);
                }
            }

            return Task.FromResult(false);
        }, TimeSpan.FromSeconds(30), "the MONITOR feed to reach the marker", TimeSpan.FromMilliseconds(20));
        return through;
    }
}
