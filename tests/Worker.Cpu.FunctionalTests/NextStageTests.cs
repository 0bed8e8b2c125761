using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

[Collection(CpuLaneCollection.Name)]
public sealed class NextStageTests(SharedRabbitMq rabbit, ITestOutputHelper output)
{
    [Fact]
    public async Task Pbkdf2_with_then_hands_its_result_to_the_io_lane_under_a_derived_id_in_the_same_trace()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        await lane.StartApiAsync(rabbit);
        var worker = await lane.StartWorkerAsync();
        try
        {
            await ForwardsAsync(lane);
        }
        catch
        {
            output.WriteLine(worker.OutputText);
            throw;
        }
    }

    private async Task ForwardsAsync(CpuLaneHarness lane)
    {
        var id = "chain-" + Guid.NewGuid().ToString("N");
        var traceId = Convert.ToHexStringLower(Guid.NewGuid().ToByteArray());
        var submit = () => new HttpRequestMessage(HttpMethod.Post, "/events")
        {
            Content = JsonContent.Create(new
            {
                id,
                type = "hash.pbkdf2",
                payload = new
                {
                    data = Bursts.DataOf(id),
                    iterations = 1000,
                    then = new { type = "webhook.post", payload = new { order = 42, note = "chained" } },
                },
            }),
        };
        var answer = HttpStatusCode.ServiceUnavailable;
        for (var attempt = 0; answer == HttpStatusCode.ServiceUnavailable && attempt < 5; attempt++)
        {
            using var request = submit();
            request.Headers.Add("traceparent", $"00-{traceId}-{traceId[..16]}-01");
            using var response = await lane.Api!.SendAsync(request); // 503 on a loaded machine: resubmitting the same id is safe
            answer = response.StatusCode;
        }

        Assert.Equal(HttpStatusCode.Accepted, answer);

        var status = await lane.WaitForStateAsync(id, "succeeded", TimeSpan.FromSeconds(90));
        Assert.Equal(Bursts.ExpectedPbkdf2(id, 1000), status["result"]);

        // The next stage exists before the CPU entry was acknowledged: its status is there, on the I/O lane.
        var next = await lane.StatusAsync(id + ".then");
        Assert.Equal("accepted", next["state"]);
        Assert.Equal("io", next["lane"]);
        Assert.Equal("webhook.post", next["type"]);

        // And RabbitMQ holds it, durably queued for Worker.Io, carrying the CPU result and the caller's trace.
        await using var connection = await lane.RabbitMq!.ConnectAsync();
        await using var channel = await connection.CreateChannelAsync();
        // No Worker.Io ever ran against this broker: the queue and its binding exist because the forward declared them.
        var message = await Eventually.ReturnsAsync(() => channel.BasicGetAsync(IoLaneTopology.QueueName, autoAck: true),
            m => m is not null, TimeSpan.FromSeconds(30), "the forwarded message in events-io");
        var body = Encoding.UTF8.GetString(message!.Body.Span);
        output.WriteLine(body);
        var envelope = JsonDocument.Parse(body).RootElement;
        var forwarded = envelope.GetProperty("message");
        Assert.Equal(id + ".then", forwarded.GetProperty("eventId").GetString());
        Assert.Equal("webhook.post", forwarded.GetProperty("type").GetString());
        var payload = JsonDocument.Parse(forwarded.GetProperty("payload").GetString()!).RootElement;
        Assert.Equal(42, payload.GetProperty("order").GetInt32());
        Assert.Equal(id, payload.GetProperty("source").GetProperty("id").GetString());
        Assert.Equal("hash.pbkdf2", payload.GetProperty("source").GetProperty("type").GetString());
        Assert.Equal(status["result"], payload.GetProperty("source").GetProperty("result").GetString());
        Assert.DoesNotContain("then", payload.EnumerateObject().Select(p => p.Name));
        Assert.StartsWith($"00-{traceId}-", envelope.GetProperty("headers").GetProperty("MT-Activity-Id").GetString());
    }

    [Fact]
    public async Task Malformed_then_is_dead_lettered_without_retries()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        await lane.StartWorkerAsync();
        var id = "badthen-" + Guid.NewGuid().ToString("N");
        await lane.EnqueueAsync((id, "hash.pbkdf2", new { data = "x", iterations = 1, then = new { type = "hash.pbkdf2", payload = new { } } }));

        var status = await lane.WaitForStateAsync(id, "dead", TimeSpan.FromSeconds(90));
        Assert.Equal("1", status["attempts"]);
        Assert.Contains("payload.then", Assert.Single(await lane.DeadLettersAsync())["errorMessage"].ToString(), StringComparison.Ordinal);
    }
}
