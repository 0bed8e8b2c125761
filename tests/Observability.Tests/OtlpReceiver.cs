using System.Collections.Concurrent;
using System.Net.Http.Headers;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace EventPipeline.Observability.Tests;

/// <summary>
/// An OTLP/HTTP (protobuf) collector inside the test: the services export to it, it keeps every span and log record
/// for the tests to read, and passes each request on unchanged to the Aspire dashboard so the dashboard shows the same.
/// </summary>
public sealed class OtlpReceiver : IAsyncDisposable
{
    private static readonly byte[] EmptyResponse = [];
    private readonly ConcurrentQueue<ReceivedSpan> _spans = new();
    private readonly ConcurrentQueue<ReceivedLog> _logs = new();
    private readonly HttpClient _forward = new() { Timeout = TimeSpan.FromSeconds(5) };
    private WebApplication? _app;

    public Uri Endpoint { get; private set; } = null!;

    /// <summary>Where requests are passed on to (the dashboard's OTLP/HTTP endpoint), once it is known.</summary>
    public Uri? ForwardTo { get; set; }

    public IReadOnlyCollection<ReceivedSpan> Spans => _spans;

    public IReadOnlyCollection<ReceivedLog> Logs => _logs;

    public async Task StartAsync(int port)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.WebHost.UseUrls($"http://127.0.0.1:{port}");
        _app = builder.Build();
        _app.MapPost("/v1/traces", context => ReceiveAsync(context, body => Enqueue(_spans, OtlpProtobuf.ReadSpans(body))));
        _app.MapPost("/v1/logs", context => ReceiveAsync(context, body => Enqueue(_logs, OtlpProtobuf.ReadLogs(body))));
        _app.MapPost("/v1/metrics", context => ReceiveAsync(context, _ => { }));
        await _app.StartAsync();
        Endpoint = new Uri($"http://127.0.0.1:{port}");
    }

    private async Task ReceiveAsync(HttpContext context, Action<ReadOnlyMemory<byte>> read)
    {
        using var buffer = new MemoryStream();
        await context.Request.Body.CopyToAsync(buffer);
        var body = buffer.ToArray();
        read(body);
        await ForwardAsync(context.Request.Path, context.Request.ContentType, body);
        context.Response.ContentType = "application/x-protobuf";
        await context.Response.Body.WriteAsync(EmptyResponse);
    }

    private async Task ForwardAsync(string path, string? contentType, byte[] body)
    {
        if (ForwardTo is null)
        {
            return;
        }

        try
        {
            using var content = new ByteArrayContent(body);
            content.Headers.ContentType = MediaTypeHeaderValue.Parse(contentType ?? "application/x-protobuf");
            using var _ = await _forward.PostAsync(new Uri(ForwardTo, path), content);
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException)
        {
            // The dashboard is a viewer here; the tests read what this receiver kept.
        }
    }

    private static void Enqueue<T>(ConcurrentQueue<T> queue, IEnumerable<T> items)
    {
        foreach (var item in items)
        {
            queue.Enqueue(item);
        }
    }

    public async ValueTask DisposeAsync()
    {
        _forward.Dispose();
        if (_app is not null)
        {
            await _app.StopAsync();
            await _app.DisposeAsync();
        }
    }
}
