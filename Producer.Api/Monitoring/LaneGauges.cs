using EventPipeline.Contracts;
using EventPipeline.ServiceDefaults;

namespace EventPipeline.Producer.Monitoring;

/// <summary>
/// Exports what <see cref="LaneSampler"/> last read from the brokers as the pipeline's lane gauges
/// (<c>eventpipeline_lane_*</c>), so a scrape never waits on a broker. A lane whose sample is stale is left out rather
/// than shown with old values: a frozen gauge must not look like a quiet lane. Only the API exports them, so each lane
/// is reported once.
/// </summary>
public sealed class LaneGauges(LaneSampler sampler, PipelineMetrics metrics) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        metrics.ObserveLanes(Current);
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private IReadOnlyList<LaneSnapshot> Current() =>
    [
        .. Lanes.All.Select(sampler.Latest).OfType<LaneState>().Select(s =>
            new LaneSnapshot(s.Lane, s.Depth, s.Lag, s.Pending, s.OldestPendingAgeMs / 1000.0, s.DeadLetters, s.Consumers)),
    ];
}
