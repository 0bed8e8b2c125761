using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using EventPipeline.Testing;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// A CPU event's <c>payload.then</c> across both lanes: Producer.Api → Worker.Cpu → RabbitMQ → Worker.Io → the
/// target the client named, all real processes.
/// </summary>
public sealed class ChainedDeliveryTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Chained_webhook_goes_to_the_target_the_client_named_with_its_payload_and_the_cpu_result()
    {
        await using var target = RecordingHttpListener.Start();
        await using var host = await IoLaneHost.StartBrokersAsync();
        await host.StartReceiverAsync();
        // The target is allowed at both doors: the API that validates it and the worker that calls it.
        await Task.WhenAll(
            host.StartApiAsync(new Dictionary<string, string?> { ["Downstream__AllowedOrigins__1"] = target.Origin }),
            host.StartWorkerAsync(new Dictionary<string, string?> { ["Downstream__AllowedOrigins__0"] = target.Origin }),
            host.StartCpuWorkerAsync());

        var id = IoLaneHost.NewId("chained");
        var targetUrl = $"{target.Origin}/hooks/chained?via=then";
        using var response = await host.ApiClient.PostAsJsonAsync("/events", new
        {
            id,
            type = "hash.pbkdf2",
            payload = new
            {
                data = "chained-data",
                iterations = 1000,
                then = new { type = "webhook.post", target = targetUrl, payload = new { order = 42, note = "chained" } },
            },
        });
        Assert.True(response.StatusCode == HttpStatusCode.Accepted, $"POST /events answered {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");

        var nextId = id + ".then";
        try
        {
            var final = await Eventually.ReturnsAsync(() => host.StatusAsync(nextId), s => s.State is "succeeded" or "dead", Deadline, $"{nextId} to finish");
            var cpuResult = (await host.StatusAsync(id)).State == "succeeded"
                ? (string?)(await host.StatusConnection.GetDatabase().HashGetAsync($"event:{id}", "result"))
                : null;
            Assert.False(string.IsNullOrEmpty(cpuResult), $"the CPU event {id} has no result");

            var delivered = target.Requests.Where(r => r.Headers.GetValueOrDefault("Idempotency-Key") == nextId).ToList();
            Assert.True(delivered.Count == 1,
                $"the target the client named got {delivered.Count} deliveries of {nextId} (event {final.State}, error {final.Error}); " +
                $"the configured receiver got {(await host.ReceivedAsync([nextId]))[nextId].Arrivals}");
            Assert.Equal("succeeded", final.State);
            Assert.Equal("/hooks/chained?via=then", delivered[0].PathAndQuery);
            Assert.Equal(0, (await host.ReceivedAsync([nextId]))[nextId].Arrivals);

            // The body is then.payload plus the CPU event's id, type and result.
            var body = JsonDocument.Parse(delivered[0].Body).RootElement;
            Assert.Equal(42, body.GetProperty("order").GetInt32());
            Assert.Equal("chained", body.GetProperty("note").GetString());
            Assert.Equal(id, body.GetProperty("source").GetProperty("id").GetString());
            Assert.Equal("hash.pbkdf2", body.GetProperty("source").GetProperty("type").GetString());
            Assert.Equal(cpuResult, body.GetProperty("source").GetProperty("result").GetString());
        }
        catch
        {
            output.WriteLine(string.Join('\n', host.CpuWorker!.Output.TakeLast(40)));
            output.WriteLine(string.Join('\n', host.Worker!.Output.TakeLast(40)));
            throw;
        }
    }
}
