using System.Net.Http.Json;
using EventPipeline.Testing;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>Where a failing downstream call ends: retried and dead-lettered, or dead-lettered at once.</summary>
[Collection(SharedIoLaneCollection.Name)]
public sealed class FailureRoutingTests(SharedIoLane lane, ITestOutputHelper output)
{
    private const int MaxAttempts = 5;
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(90);
    private IoLaneHost Host => lane.Host;

    [Fact]
    public async Task Event_answered_500_lands_in_error_queue_after_exactly_the_configured_attempts_and_others_succeed()
    {
        await Host.EnsureWorkerAsync();
        var failing = IoLaneHost.NewId("http500");
        var healthy = Enumerable.Range(0, 10).Select(i => IoLaneHost.NewId($"ok500-{i}")).ToList();

        await Host.SubmitAcceptedAsync(IoLaneHost.Webhook(failing, status: 500));
        foreach (var id in healthy)
        {
            await Host.SubmitAcceptedAsync(IoLaneHost.Webhook(id));
        }

        await Host.WaitForStateAsync(failing, "dead", Deadline);
        var inErrorQueue = await Eventually.ReturnsAsync(() => Host.FindInQueueAsync(IoLaneHost.ErrorQueueName, failing), m => m is not null, Deadline, "the event in events-io_error");

        var received = await Host.ReceivedAsync([failing]);
        Assert.Equal(MaxAttempts, received[failing].Arrivals);
        Assert.Equal(0, received[failing].Count);
        var status = await Host.StatusAsync(failing);
        Assert.Equal(MaxAttempts, status.Attempts);
        Assert.Contains("500", status.Error);

        // MassTransit's fault headers: what failed, how often it was retried, and on which host.
        output.WriteLine(string.Join("\n", inErrorQueue!.Headers.Select(h => $"{h.Key}: {Truncate(h.Value)}")));
        Assert.Contains("TransientDownstreamException", inErrorQueue.Headers["MT-Fault-ExceptionType"]);
        Assert.Equal((MaxAttempts - 1).ToString(), inErrorQueue.Headers["MT-Fault-RetryCount"]);
        Assert.Contains(inErrorQueue.Headers.Keys, k => k.StartsWith("MT-Host-", StringComparison.Ordinal));

        foreach (var id in healthy)
        {
            await Host.WaitForStateAsync(id, "succeeded", Deadline);
        }

        var healthyReceived = await Host.ReceivedAsync(healthy);
        Assert.All(healthy, id => Assert.Equal(1, healthyReceived[id].Count));
    }

    [Fact]
    public async Task Event_answered_400_lands_in_error_queue_after_one_attempt()
    {
        await Host.EnsureWorkerAsync();
        var rejected = IoLaneHost.NewId("http400");
        await Host.SubmitAcceptedAsync(IoLaneHost.Webhook(rejected, status: 400));

        await Host.WaitForStateAsync(rejected, "dead", Deadline);
        var inErrorQueue = await Eventually.ReturnsAsync(() => Host.FindInQueueAsync(IoLaneHost.ErrorQueueName, rejected), m => m is not null, Deadline, "the event in events-io_error");

        Assert.Equal(1, (await Host.ReceivedAsync([rejected]))[rejected].Arrivals);
        Assert.Equal(1, (await Host.StatusAsync(rejected)).Attempts);
        Assert.Contains("PermanentDownstreamException", inErrorQueue!.Headers["MT-Fault-ExceptionType"]);
    }

    [Fact]
    public async Task Event_answered_503_twice_succeeds_on_the_third_attempt()
    {
        await Host.EnsureWorkerAsync();
        var flaky = IoLaneHost.NewId("flaky");
        await Host.SubmitAcceptedAsync(IoLaneHost.Webhook(flaky, failTimes: 2));

        await Host.WaitForStateAsync(flaky, "succeeded", Deadline);
        var received = (await Host.ReceivedAsync([flaky]))[flaky];
        Assert.Equal(3, received.Arrivals);
        Assert.Equal(1, received.Count);
        Assert.Equal(3, (await Host.StatusAsync(flaky)).Attempts);
    }

    [Fact]
    public async Task Delivery_carries_idempotency_key_and_trace_context()
    {
        await Host.EnsureWorkerAsync();
        var id = IoLaneHost.NewId("traced");
        await Host.SubmitAcceptedAsync(IoLaneHost.Webhook(id));
        await Host.WaitForStateAsync(id, "succeeded", Deadline);

        var json = await Host.ReceiverClient.GetFromJsonAsync<System.Text.Json.JsonElement>($"/received/{id}");
        Assert.Equal(1, json.GetProperty("count").GetInt32());
        Assert.Matches("^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$", json.GetProperty("traceparent").GetString());
    }

    [Fact]
    public async Task Event_with_an_allowed_target_is_delivered_to_that_url_not_the_configured_one()
    {
        await Host.EnsureWorkerAsync();
        var id = IoLaneHost.NewId("targeted");
        var evt = IoLaneHost.Webhook(id);
        evt["target"] = new Uri(Host.ReceiverClient.BaseAddress!, "/webhook/alternate?via=target").ToString();
        await Host.SubmitAcceptedAsync(evt);
        await Host.WaitForStateAsync(id, "succeeded", Deadline);

        var json = await Host.ReceiverClient.GetFromJsonAsync<System.Text.Json.JsonElement>($"/received/{id}");
        Assert.Equal(1, json.GetProperty("count").GetInt32());
        Assert.Equal("/webhook/alternate?via=target", json.GetProperty("path").GetString());
    }

    private static string Truncate(string value) => value.Length > 200 ? value[..200] + "…" : value;
}
