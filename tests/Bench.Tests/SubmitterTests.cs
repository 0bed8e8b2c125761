using System.Collections.Concurrent;
using System.Net;
using System.Text.Json;
using EventPipeline.Bench.Load;
using EventPipeline.Bench.Workloads;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace EventPipeline.Bench.Tests;

/// <summary>
/// The load generator checks every answer although it no longer buffers the answers' bodies: only a 202 marks its
/// events accepted, every other status is counted per event, and the connections are still reused after an answer
/// whose body was not read (length-delimited or chunked).
/// </summary>
public sealed class SubmitterTests
{
    [Fact]
    public async Task Submitter_counts_only_202_answers_as_accepted_and_reuses_its_connections_without_reading_bodies()
    {
        var connections = new ConcurrentDictionary<string, bool>();
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        builder.Logging.ClearProviders();
        await using var app = builder.Build();
        app.MapPost("/events", async (HttpContext context) =>
        {
            connections[context.Connection.Id] = true;
            using var body = await JsonDocument.ParseAsync(context.Request.Body);
            var n = int.Parse(body.RootElement.GetProperty("id").GetString()!.Split('-')[^1], System.Globalization.CultureInfo.InvariantCulture);
            // Every third event is refused with a ProblemDetails body; the accepted ones answer with a body too, every
            // other one chunked (no Content-Length), so that both ways of ending a body must be drained before reuse.
            if (n % 3 == 0)
            {
                context.Response.StatusCode = 503;
                await context.Response.WriteAsJsonAsync(new { title = "broker unavailable", detail = new string('x', 2000) });
                return;
            }

            context.Response.StatusCode = 202;
            if (n % 2 == 0)
            {
                await context.Response.Body.FlushAsync();
            }
            else
            {
                context.Response.ContentLength = 40;
            }

            await context.Response.WriteAsync(new string('a', 40));
        });
        await app.StartAsync();

        using var api = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 4 }) { BaseAddress = new Uri(app.Urls.First()) };
        var ids = Enumerable.Range(0, 300).Select(i => $"bench-test-{i}").ToArray();
        var submitter = new Submitter(api, Workload.Parse("noop-cpu", 0, 0), connections: 4);
        var outcome = await submitter.BurstAsync(submitter.Prepare(ids, 1), ids.Length, CancellationToken.None);

        Assert.Equal(Enumerable.Range(0, 300).Select(i => i % 3 != 0), outcome.Accepted);
        Assert.Equal(new Dictionary<int, int> { [503] = 100 }, outcome.Rejected);
        Assert.Equal(300, submitter.Submitted);
        Assert.InRange(connections.Count, 1, 4);
    }
}
