using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json;

namespace EventPipeline.Observability.Tests;

/// <summary>
/// One event is one trace across every service it passes, read from the OTLP the services really export: the Redis lane
/// carries the trace context (<c>traceparent</c>, <c>tracestate</c>, <c>baggage</c>) inside the stream entry, the I/O lane's publisher carries it in the message header MassTransit's consumer reads (<c>MT-Activity-Id</c>), HttpClient in the
/// downstream call.
/// </summary>
[Collection(ObservedAppHostCollection.Name)]
public sealed class TraceTests(ObservedAppHostFixture fixture)
{
    private const string IoLaneQueue = "events-io";
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(45);

    [Fact]
    public async Task Cpu_event_is_one_trace_from_the_api_through_redis_to_worker_cpu()
    {
        var id = await fixture.SubmitAsync("hash.pbkdf2", new { data = "traced", iterations = 1000 });
        await fixture.WaitForStateAsync(id, "succeeded");

        var process = await SpanOfEventAsync("worker-cpu", id);
        var trace = await TraceAsync(process.TraceId, spans => spans.Any(IsApiServerSpan));

        var server = Assert.Single(trace, IsApiServerSpan);
        var publish = Assert.Single(trace, s => s.Service == "producer-api" && s.Kind == ReceivedSpan.Producer && s.Attribute("messaging.system") == "redis");
        Assert.Equal("events.cpu", publish.Attribute("messaging.destination.name"));
        Assert.Equal(server.SpanId, publish.ParentSpanId);
        Assert.Equal(ReceivedSpan.Consumer, process.Kind);
        Assert.Equal(publish.SpanId, process.ParentSpanId);
        Assert.Equal("redis", process.Attribute("messaging.system"));
        Assert.Equal("events.cpu", process.Attribute("messaging.destination.name"));
        Assert.Equal("process", process.Attribute("messaging.operation.type"));
        Assert.Equal("cpu-workers", process.Attribute("messaging.consumer.group.name"));
    }

    /// <summary>
    /// The CPU lane carries the whole trace context through the stream entry (the OpenTelemetry propagator), not only
    /// <c>traceparent</c>: the vendor state a client sent in <c>tracestate</c> is on the worker's span.
    /// </summary>
    [Fact]
    public async Task Cpu_event_carries_the_clients_tracestate_from_the_api_to_the_worker_span()
    {
        var traceId = ActivityTraceId.CreateRandom().ToHexString();
        const string traceState = "eventpipeline=ingest-test,other=1";
        using var request = new HttpRequestMessage(HttpMethod.Post, "/events")
        {
            Content = JsonContent.Create(new { type = "noop.cpu", payload = new { } }),
        };
        request.Headers.Add("traceparent", $"00-{traceId}-{ActivitySpanId.CreateRandom().ToHexString()}-01");
        request.Headers.Add("tracestate", traceState);
        request.Headers.Add("baggage", "tenant=acme");
        using var response = await fixture.Api.SendAsync(request);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.True(response.IsSuccessStatusCode, $"POST /events answered {(int)response.StatusCode}: {body}");
        var id = body.GetProperty("id").GetString()!;
        await fixture.WaitForStateAsync(id, "succeeded");

        var process = await SpanOfEventAsync("worker-cpu", id);
        Assert.Equal(traceId, process.TraceId);
        Assert.Equal(traceState, process.TraceState);
    }

    [Fact]
    public async Task Webhook_event_is_one_trace_from_the_api_through_rabbitmq_and_worker_io_to_downstream()
    {
        var id = await fixture.SubmitAsync("webhook.post", new { order = "traced-" + Guid.NewGuid().ToString("N") });
        await fixture.WaitForStateAsync(id, "succeeded");

        var consume = await SpanOfEventAsync("worker-io", id);
        // Each service exports on its own schedule: wait for every span asserted on below, not only the last hop.
        var trace = await TraceAsync(consume.TraceId, spans => spans.Any(IsApiServerSpan) && spans.Any(IsDownstreamServerSpan)
            && spans.Any(IsRabbitMqReceiveSpan) && spans.Any(IsApiRabbitMqSendSpan) && spans.Any(IsWorkerIoPostSpan));

        Assert.Single(trace, IsApiServerSpan);
        var send = Assert.Single(trace, IsApiRabbitMqSendSpan);
        Assert.False(string.IsNullOrEmpty(send.Attribute("messaging.destination.name")), send.ToString());
        // MassTransit's receive span carries the messaging attributes; the consume span under it is where the consumer runs.
        var receive = trace.SingleOrDefault(IsRabbitMqReceiveSpan);
        Assert.True(receive is not null, "no worker-io receive span with messaging.system=rabbitmq in:\n" + Dump(trace));
        Assert.Equal(IoLaneQueue, receive!.Attribute("messaging.destination.name"));
        Assert.Equal(ReceivedSpan.Consumer, consume.Kind);
        Assert.Equal("rabbitmq", consume.Attribute("messaging.system"));
        Assert.True(IsDescendant(receive, send, trace), $"{receive} should descend from {send}");
        Assert.True(IsDescendant(consume, receive, trace), $"{consume} should descend from {receive}");

        var call = Assert.Single(trace, IsWorkerIoPostSpan);
        var received = Assert.Single(trace, IsDownstreamServerSpan);
        Assert.True(IsDescendant(call, consume, trace), $"{call} should descend from {consume}");
        Assert.Equal(call.SpanId, received.ParentSpanId);
    }

    /// <summary>
    /// The API traces the I/O lane's publish once per published chunk (its own <c>EventPipeline</c> span, which the
    /// consumer's receive descends from), not once more per message: RabbitMQ.Client's own publish spans (Aspire's client
    /// traces them unless <c>Aspire:RabbitMQ:Client:DisableTracing</c> is false) cost the API a span and a trace header
    /// per event and added nothing the chunk span does not show.
    /// </summary>
    [Fact]
    public async Task Api_traces_an_io_publish_once_per_chunk_without_a_rabbitmq_client_span_per_message()
    {
        var id = await fixture.SubmitAsync("webhook.post", new { order = "chunk-" + Guid.NewGuid().ToString("N") });
        await fixture.WaitForStateAsync(id, "succeeded");

        var consume = await SpanOfEventAsync("worker-io", id);
        // A span ends before its parent and one batch processor exports them in order: once the chunk span is here,
        // any RabbitMQ.Client span under it would be too.
        var trace = await TraceAsync(consume.TraceId, spans => spans.Any(IsApiRabbitMqSendSpan) && spans.Any(IsRabbitMqReceiveSpan));

        var send = Assert.Single(trace, IsApiRabbitMqSendSpan);
        Assert.True(IsDescendant(trace.Single(IsRabbitMqReceiveSpan), send, trace), "the receive should descend from the chunk span:\n" + Dump(trace));
        Assert.DoesNotContain(trace, s => s.Scope.StartsWith("RabbitMQ.Client", StringComparison.Ordinal));
    }

    /// <summary>A CPU event whose result is handed on to the I/O lane (<c>"then"</c>) is one trace through all four services.</summary>
    [Fact]
    public async Task Chained_event_is_one_trace_from_the_api_through_both_lanes_to_downstream()
    {
        var marker = "chained-" + Guid.NewGuid().ToString("N");
        var id = await fixture.SubmitAsync("hash.pbkdf2", new
        {
            data = "chained",
            iterations = 1000,
            then = new { type = "webhook.post", payload = new { order = marker } },
        });
        await fixture.WaitForStateAsync(id, "succeeded");

        var process = await SpanOfEventAsync("worker-cpu", id);
        // Each service exports on its own schedule (the downstream's span can arrive before worker-io's): wait for
        // every span asserted on below.
        var trace = await TraceAsync(process.TraceId, spans => spans.Any(IsDownstreamServerSpan) && spans.Any(IsApiServerSpan)
            && spans.Any(IsRabbitMqReceiveSpan) && spans.Any(IsWorkerCpuHandOffSpan));

        Assert.Equal(["downstream", "producer-api", "worker-cpu", "worker-io"], trace.Select(s => s.Service).Distinct().Order());
        var handOff = Assert.Single(trace, IsWorkerCpuHandOffSpan);
        var consume = Assert.Single(trace, IsRabbitMqReceiveSpan);
        Assert.True(IsDescendant(handOff, process, trace), $"{handOff} should descend from {process}");
        Assert.True(IsDescendant(consume, handOff, trace), $"{consume} should descend from {handOff}");
        Assert.True(IsDescendant(trace.Single(IsDownstreamServerSpan), consume, trace));
    }

    [Fact]
    public async Task Worker_logs_about_an_event_carry_the_trace_and_span_of_its_processing()
    {
        var id = await fixture.SubmitAsync("test.fail", new { lane = "cpu" });
        await fixture.WaitForStateAsync(id, "dead");

        var log = await Eventually.ReturnsAsync(
            () => Task.FromResult(fixture.Otlp.Logs.FirstOrDefault(l => l.Service == "worker-cpu" && l.TraceId.Length > 0
                && (l.Attributes.Values.Contains(id) || l.Body.Contains(id, StringComparison.Ordinal)))),
            l => l is not null, Deadline, $"a worker-cpu log record about {id}");

        var span = Assert.Single(fixture.Otlp.Spans, s => s.SpanId == log!.SpanId);
        Assert.Equal(log!.TraceId, span.TraceId);
        Assert.Equal(id, span.Attribute("eventpipeline.event.id"));
    }

    private static string Dump(IEnumerable<ReceivedSpan> trace) =>
        string.Join("\n", trace.Select(s => $"{s} {string.Join(", ", s.Attributes.Select(a => $"{a.Key}={a.Value}"))}"));

    private static bool IsRabbitMqReceiveSpan(ReceivedSpan s) =>
        s.Service == "worker-io" && s.Kind == ReceivedSpan.Consumer && s.Attribute("messaging.system") == "rabbitmq"
        && s.Attribute("messaging.operation") == "receive";

    private static bool IsApiServerSpan(ReceivedSpan s) =>
        s.Service == "producer-api" && s.Kind == ReceivedSpan.Server && s.Name.StartsWith("POST /events", StringComparison.Ordinal);

    // The API's publish span (Pipeline.Shared's IoEventPublisher, one per published chunk); the API's RabbitMQ.Client
    // (traced through Aspire's client) adds its own publish span per message under it.
    private static bool IsApiRabbitMqSendSpan(ReceivedSpan s) =>
        s.Service == "producer-api" && s.Kind == ReceivedSpan.Producer && s.Attribute("messaging.system") == "rabbitmq" && s.Scope == "EventPipeline";

    private static bool IsWorkerCpuHandOffSpan(ReceivedSpan s) =>
        s.Service == "worker-cpu" && s.Kind == ReceivedSpan.Producer && s.Attribute("messaging.system") == "rabbitmq";

    private static bool IsWorkerIoPostSpan(ReceivedSpan s) =>
        s.Service == "worker-io" && s.Kind == ReceivedSpan.Client && s.Attribute("http.request.method") == "POST";

    private static bool IsDownstreamServerSpan(ReceivedSpan s) => s.Service == "downstream" && s.Kind == ReceivedSpan.Server;

    private static bool IsDescendant(ReceivedSpan span, ReceivedSpan ancestor, IReadOnlyList<ReceivedSpan> trace)
    {
        var byId = trace.GroupBy(s => s.SpanId).ToDictionary(g => g.Key, g => g.First());
        for (var current = span; byId.TryGetValue(current.ParentSpanId, out var parent); current = parent)
        {
            if (parent.SpanId == ancestor.SpanId)
            {
                return true;
            }
        }

        return false;
    }

    private async Task<ReceivedSpan> SpanOfEventAsync(string service, string eventId) =>
        (await Eventually.ReturnsAsync(
            () => Task.FromResult(fixture.Otlp.Spans.FirstOrDefault(s => s.Service == service && s.Attribute("eventpipeline.event.id") == eventId)),
            s => s is not null, Deadline, $"a {service} span of event {eventId}"))!;

    private async Task<IReadOnlyList<ReceivedSpan>> TraceAsync(string traceId, Func<IReadOnlyList<ReceivedSpan>, bool> complete)
    {
        try
        {
            return await Eventually.ReturnsAsync(
                () => Task.FromResult<IReadOnlyList<ReceivedSpan>>(fixture.Otlp.Spans.Where(s => s.TraceId == traceId).ToList()),
                complete, Deadline, $"trace {traceId} to be complete");
        }
        catch (TimeoutException)
        {
            var spans = fixture.Otlp.Spans.Where(s => s.TraceId == traceId).Select(s => s.ToString());
            throw new Xunit.Sdk.XunitException($"trace {traceId} is incomplete; it holds:\n{string.Join("\n", spans)}");
        }
    }
}
