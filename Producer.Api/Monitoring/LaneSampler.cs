using System.Collections.Concurrent;
using EventPipeline.Contracts;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Monitoring;

/// <summary>
/// Reads each lane's backlog in the background every <see cref="LaneMonitorOptions.SampleInterval"/>, so a submission
/// can be checked against the lag limit without a broker round trip. Each lane is read on its own: one broker being
/// down leaves the other lane's reading fresh.
/// </summary>
public sealed class LaneSampler(LaneMonitor monitor, IOptions<LaneMonitorOptions> options, ILogger<LaneSampler> logger) : BackgroundService
{
    private readonly ConcurrentDictionary<string, (LaneState State, DateTimeOffset At)> _latest = new(StringComparer.Ordinal);

    /// <summary>The latest reading of a lane, or null when there is none recent enough to act on.</summary>
    public LaneState? Latest(string lane)
    {
        var maxAge = options.Value.SampleInterval * 3 + options.Value.Timeout;
        return _latest.TryGetValue(lane, out var sample) && DateTimeOffset.UtcNow - sample.At <= maxAge ? sample.State : null;
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(options.Value.SampleInterval);
        do
        {
            await Task.WhenAll(Lanes.All.Select(lane => SampleAsync(lane, stoppingToken)));
        }
        while (await WaitAsync(timer, stoppingToken));
    }

    private async Task SampleAsync(string lane, CancellationToken stoppingToken)
    {
        try
        {
            _latest[lane] = (await monitor.ReadAsync(lane, stoppingToken), DateTimeOffset.UtcNow);
        }
        catch (LaneUnavailableException ex)
        {
            logger.LogDebug(ex, "Could not sample the {Lane} lane", lane);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    private static async Task<bool> WaitAsync(PeriodicTimer timer, CancellationToken stoppingToken)
    {
        try
        {
            return await timer.WaitForNextTickAsync(stoppingToken);
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }
}
