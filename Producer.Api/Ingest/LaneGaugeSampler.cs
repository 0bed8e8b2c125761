using EventPipeline.ServiceDefaults;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Ingest;

/// <summary>How often the lane gauges are refreshed from the brokers, bound from <c>LaneGauges</c>.</summary>
public sealed class LaneGaugeOptions
{
    public TimeSpan Interval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>A snapshot older than this is withdrawn: a gauge that stopped moving must not look like a quiet lane.</summary>
    public TimeSpan MaxAge { get; set; } = TimeSpan.FromSeconds(15);
}

/// <summary>
/// Feeds the <c>eventpipeline.lane.*</c> gauges. A metrics collection (a Prometheus scrape, an OTLP export) must not
/// wait for two brokers, so the lanes are read here in the background every <see cref="LaneGaugeOptions.Interval"/>
/// and the collection callback only returns the latest snapshot. Only the API runs this, so each lane is reported once.
/// </summary>
public sealed class LaneGaugeSampler : BackgroundService
{
    private readonly LaneMonitor _monitor;
    private readonly LaneGaugeOptions _options;
    private readonly ILogger<LaneGaugeSampler> _logger;
    private volatile Sample? _latest;

    public LaneGaugeSampler(LaneMonitor monitor, PipelineMetrics metrics, IOptions<LaneGaugeOptions> options, ILogger<LaneGaugeSampler> logger)
    {
        _monitor = monitor;
        _options = options.Value;
        _logger = logger;
        metrics.ObserveLanes(Current);
    }

    /// <summary>The latest snapshot, or none when sampling has failed for longer than the allowed age.</summary>
    public IReadOnlyList<LaneSnapshot> Current() =>
        _latest is { } sample && DateTimeOffset.UtcNow - sample.TakenAt <= _options.MaxAge ? sample.Lanes : [];

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(_options.Interval);
        var failing = false;
        do
        {
            try
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
                timeout.CancelAfter(_options.MaxAge);
                var lanes = await _monitor.ReadAsync(timeout.Token);
                _latest = new Sample(lanes, DateTimeOffset.UtcNow);
                if (failing)
                {
                    _logger.LogInformation("Lane gauges are sampled again");
                    failing = false;
                }
            }
            catch (Exception ex) when (!stoppingToken.IsCancellationRequested)
            {
                // Logged once per outage, not once a second.
                if (!failing)
                {
                    _logger.LogWarning(ex, "Sampling the lanes for the lane gauges failed; retrying every {Interval}", _options.Interval);
                    failing = true;
                }
            }
        }
        while (await WaitForNextTickAsync(timer, stoppingToken));
    }

    private static async Task<bool> WaitForNextTickAsync(PeriodicTimer timer, CancellationToken stoppingToken)
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

    private sealed record Sample(IReadOnlyList<LaneSnapshot> Lanes, DateTimeOffset TakenAt);
}

public static class LaneGaugeSamplerExtensions
{
    /// <summary>Samples the lanes in the background for the <c>eventpipeline.lane.*</c> gauges.</summary>
    public static IServiceCollection AddLaneGaugeSampler(this IServiceCollection services)
    {
        services.AddOptions<LaneGaugeOptions>().BindConfiguration("LaneGauges")
            .Validate(o => o.Interval > TimeSpan.Zero && o.MaxAge > o.Interval, "LaneGauges:Interval must be positive and below LaneGauges:MaxAge")
            .ValidateOnStart();
        services.AddHostedService<LaneGaugeSampler>();
        return services;
    }
}
