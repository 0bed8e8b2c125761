using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace EventPipeline.ServiceDefaults;

/// <summary>Names of the pipeline's own ActivitySource and Meter, shared by every service.</summary>
public static class PipelineTelemetry
{
    public const string MeterName = "EventPipeline";
    public const string ActivitySourceName = "EventPipeline";

    public static readonly ActivitySource ActivitySource = new(ActivitySourceName);
}

/// <summary>A lane's backlog as the broker reports it; exported as gauges by the API.</summary>
/// <remarks>Pending and oldest pending age are null when the broker cannot tell them; such a gauge is left out, not faked.</remarks>
public sealed record LaneSnapshot(string Lane, long Depth, long Lag, long? Pending, double? OldestPendingAgeSeconds, long DeadLetters, long Consumers);

/// <summary>
/// The pipeline's instruments. Prometheus names: <c>eventpipeline_events_accepted_total</c>,
/// <c>eventpipeline_events_processed_total{outcome}</c>, <c>eventpipeline_handler_duration_seconds</c>,
/// <c>eventpipeline_event_latency_seconds</c>, <c>eventpipeline_lane_*</c>.
/// </summary>
public sealed class PipelineMetrics
{
    private static readonly IReadOnlyList<double> SecondsBuckets =
        [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

    private readonly Counter<long> _accepted;
    private readonly Counter<long> _processed;
    private readonly Histogram<double> _handlerDuration;
    private readonly Histogram<double> _latency;
    private readonly Meter _meter;
    private Func<IReadOnlyList<LaneSnapshot>>? _lanes;

    public PipelineMetrics(IMeterFactory meterFactory)
    {
        _meter = meterFactory.Create(PipelineTelemetry.MeterName);
        _accepted = _meter.CreateCounter<long>("eventpipeline.events.accepted", "{event}", "Events the broker confirmed holding.");
        _processed = _meter.CreateCounter<long>("eventpipeline.events.processed", "{event}",
            "Handler runs by outcome: succeeded, retried (will run again) or dead (dead-lettered).");
        var advice = new InstrumentAdvice<double> { HistogramBucketBoundaries = SecondsBuckets };
        _handlerDuration = _meter.CreateHistogram("eventpipeline.handler.duration", "s", "Time one handler run took.", advice: advice);
        _latency = _meter.CreateHistogram("eventpipeline.event.latency", "s", "From accepted to finished (succeeded or dead).", advice: advice);

        _meter.CreateObservableGauge("eventpipeline.lane.depth", () => Observe<long>(s => s.Depth), "{event}", "Events in the lane not yet finished.");
        _meter.CreateObservableGauge("eventpipeline.lane.lag", () => Observe<long>(s => s.Lag), "{event}", "Events no consumer has picked up yet.");
        _meter.CreateObservableGauge("eventpipeline.lane.pending", () => Observe<long>(s => s.Pending), "{event}", "Events delivered to a consumer and not yet acknowledged.");
        _meter.CreateObservableGauge("eventpipeline.lane.oldest_pending_age", () => Observe<double>(s => s.OldestPendingAgeSeconds), "s", "Age of the oldest unacknowledged delivery.");
        _meter.CreateObservableGauge("eventpipeline.lane.dead_letters", () => Observe<long>(s => s.DeadLetters), "{event}", "Events in the lane's dead-letter store.");
        _meter.CreateObservableGauge("eventpipeline.lane.consumers", () => Observe<long>(s => s.Consumers), "{consumer}", "Consumers attached to the lane.");
    }

    public void Accepted(string lane, string type, int count = 1) =>
        _accepted.Add(count, new("lane", lane), new("type", type));

    public void Processed(string lane, string type, string outcome, TimeSpan handlerDuration)
    {
        _processed.Add(1, new("lane", lane), new("type", type), new("outcome", outcome));
        _handlerDuration.Record(handlerDuration.TotalSeconds, new("lane", lane), new("outcome", outcome));
    }

    public void Finished(string lane, string outcome, DateTimeOffset acceptedAt) =>
        _latency.Record(Math.Max(0, (DateTimeOffset.UtcNow - acceptedAt).TotalSeconds), new("lane", lane), new("outcome", outcome));

    /// <summary>Registers the source of the lane gauges (only the API does, so each lane is reported once).</summary>
    public void ObserveLanes(Func<IReadOnlyList<LaneSnapshot>> lanes) => _lanes = lanes;

    private IEnumerable<Measurement<T>> Observe<T>(Func<LaneSnapshot, T?> value) where T : struct =>
        from snapshot in _lanes?.Invoke() ?? []
        let measured = value(snapshot)
        where measured.HasValue
        select new Measurement<T>(measured.Value, new KeyValuePair<string, object?>("lane", snapshot.Lane));
}

public static class Outcomes
{
    public const string Succeeded = "succeeded";
    public const string Retried = "retried";
    public const string Dead = "dead";
}
