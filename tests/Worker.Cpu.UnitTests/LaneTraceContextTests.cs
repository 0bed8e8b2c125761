using System.Diagnostics;
using EventPipeline.Shared;
using EventPipeline.Worker.Cpu.Lane;
using OpenTelemetry;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.UnitTests;

/// <summary>
/// The trace context a CPU-lane entry carries (<see cref="LaneTraceContext"/>): trace state and baggage travel with
/// <c>traceparent</c> from the API through the stream, a retry and a dead letter, and an entry written before they did
/// (only <c>traceparent</c>) still continues its trace.
/// </summary>
public sealed class LaneTraceContextTests
{
    // The services' OpenTelemetry SDK installs the W3C trace-context and baggage propagator; touching Sdk does the same here.
    static LaneTraceContextTests() => _ = Sdk.SuppressInstrumentation;

    private static Dictionary<string, string> EntryFields(IEnumerable<NameValueEntry> streamFields) =>
        streamFields.ToDictionary(f => f.Name.ToString(), f => f.Value.ToString());

    [Fact]
    public void Tracestate_and_baggage_set_at_ingest_reach_the_worker_and_survive_a_retry_and_a_dead_letter()
    {
        using var ingest = new Activity("ingest").SetIdFormat(ActivityIdFormat.W3C).Start();
        ingest.TraceStateString = "eventpipeline=ingest-test";
        var before = Baggage.Current;
        Baggage.Current = Baggage.Create(new Dictionary<string, string> { ["tenant"] = "acme" });
        NameValueEntry[] written;
        try
        {
            written = CpuLaneStreams.NewEntry("e1", "noop.cpu", "{}", DateTimeOffset.UtcNow, LaneTraceContext.Inject(ingest));
        }
        finally
        {
            Baggage.Current = before;
        }

        var entry = LaneEntry.Parse("1-0", EntryFields(written));
        var retried = LaneEntry.Parse("2-0", entry.NextAttemptFields("[]"));
        foreach (var read in new[] { entry, retried })
        {
            var parent = LaneTraceContext.Extract(read.TraceContext);
            Assert.Equal(ingest.TraceId, parent.ActivityContext.TraceId);
            Assert.Equal(ingest.SpanId, parent.ActivityContext.SpanId);
            Assert.Equal("eventpipeline=ingest-test", parent.ActivityContext.TraceState);
            Assert.Equal("acme", parent.Baggage.GetBaggage("tenant"));
        }

        // The dead letter and its replay copy the same fields (DeadLetterStream, CpuDeadLetters).
        var replayed = CpuLaneStreams.NewEntry("e1", "noop.cpu", "{}", DateTimeOffset.UtcNow, LaneTraceContext.Of(EntryFields(retried.TraceContext)));
        Assert.Equal(EntryFields(retried.TraceContext), EntryFields(replayed.Where(f => LaneTraceContext.Fields.Contains(f.Name.ToString()))));
    }

    [Fact]
    public void Oversized_client_baggage_is_left_out_of_the_entry_and_the_trace_still_links()
    {
        using var ingest = new Activity("ingest").SetIdFormat(ActivityIdFormat.W3C).Start();
        var before = Baggage.Current;
        Baggage.Current = Baggage.Create(new Dictionary<string, string> { ["blob"] = new string('x', 8000) });
        NameValueEntry[] written;
        try
        {
            written = LaneTraceContext.Inject(ingest);
        }
        finally
        {
            Baggage.Current = before;
        }

        Assert.DoesNotContain(written, f => f.Name == "baggage");
        Assert.All(written, f => Assert.True(f.Value.ToString().Length <= LaneTraceContext.MaxFieldLength));
        Assert.Equal(ingest.TraceId, LaneTraceContext.Extract(written).ActivityContext.TraceId);
    }

    [Fact]
    public void Entry_written_with_only_traceparent_still_continues_its_trace()
    {
        var traceId = ActivityTraceId.CreateRandom();
        var spanId = ActivitySpanId.CreateRandom();
        var entry = LaneEntry.Parse("1-0", new Dictionary<string, string>
        {
            ["id"] = "old", ["type"] = "noop.cpu", ["payload"] = "{}", ["acceptedAt"] = "1700000000000", ["attempt"] = "1",
            ["traceparent"] = $"00-{traceId}-{spanId}-01",
        });

        var parent = LaneTraceContext.Extract(entry.TraceContext);
        Assert.Equal(traceId, parent.ActivityContext.TraceId);
        Assert.Equal(spanId, parent.ActivityContext.SpanId);
        Assert.True(parent.ActivityContext.TraceFlags.HasFlag(ActivityTraceFlags.Recorded));
    }

    [Fact]
    public void Entry_without_a_trace_has_no_parent()
    {
        var entry = LaneEntry.Parse("1-0", new Dictionary<string, string> { ["id"] = "x", ["traceparent"] = "" });

        Assert.Empty(entry.TraceContext);
        Assert.Equal(default, LaneTraceContext.Extract(entry.TraceContext).ActivityContext);
    }
}
