using System.Diagnostics;
using OpenTelemetry;
using OpenTelemetry.Context.Propagation;
using StackExchange.Redis;

namespace EventPipeline.Shared;

/// <summary>
/// An event's trace context in a CPU-lane stream entry: whatever the OpenTelemetry propagator writes (W3C
/// <c>traceparent</c> and <c>tracestate</c>, W3C <c>baggage</c>), as fields of the entry named as the propagator names
/// them, so the worker's span continues the API's trace with its trace state and baggage. An entry written before
/// <c>tracestate</c> and <c>baggage</c> travelled holds only <c>traceparent</c> and is read the same way.
/// </summary>
public static class LaneTraceContext
{
    /// <summary>The fields that carry it, copied as they are through retries, dead letters and replays.</summary>
    public static readonly IReadOnlyList<string> Fields = ["traceparent", "tracestate", "baggage"];

    /// <summary>
    /// The longest trace-context field written into an entry (W3C caps <c>tracestate</c> at 512 characters; baggage has no
    /// cap of its own). A longer one is left out: the trace still links, without that field.
    /// </summary>
    public const int MaxFieldLength = 1024;

    /// <summary>The fields for the given activity (or none when there is no trace) and the current baggage.</summary>
    public static NameValueEntry[] Inject(Activity? activity)
    {
        var fields = new List<NameValueEntry>(Fields.Count);
        if (activity is not null)
        {
            Propagators.DefaultTextMapPropagator.Inject(new PropagationContext(activity.Context, Baggage.Current), fields,
                static (carrier, key, value) =>
                {
                    // Baggage comes from the client's request header (up to ~8 KB) and would be copied into every
                    // event of a batch and through retries and dead letters: only a small one travels.
                    if (value.Length <= MaxFieldLength)
                    {
                        carrier.Add(new NameValueEntry(key, value));
                    }
                });
        }

        return [.. fields];
    }

    /// <summary>The trace context fields present (and not empty) among an entry's fields.</summary>
    public static NameValueEntry[] Of(IReadOnlyDictionary<string, string> entryFields) =>
        [.. Fields.Where(f => entryFields.TryGetValue(f, out var v) && v.Length > 0).Select(f => new NameValueEntry(f, entryFields[f]))];

    /// <summary>The parent context and baggage an entry carries (default when it carries none).</summary>
    public static PropagationContext Extract(IEnumerable<NameValueEntry> traceFields) =>
        Propagators.DefaultTextMapPropagator.Extract(default, traceFields,
            static (carrier, key) => carrier.Where(f => f.Name == key && !f.Value.IsNullOrEmpty).Select(f => f.Value.ToString()));
}
