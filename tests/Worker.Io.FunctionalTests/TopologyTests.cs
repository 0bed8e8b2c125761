using EventPipeline.Testing;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// The API (publish binding) and Worker.Io (receive endpoint) both declare <c>events-io</c>; the arguments must match
/// exactly or the second declaration fails with PRECONDITION_FAILED. Each order is tried on a fresh broker state.
/// </summary>
public sealed class TopologyTests : IAsyncLifetime
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(90);
    private IoLaneHost _host = null!;

    public async Task InitializeAsync()
    {
        _host = await IoLaneHost.StartBrokersAsync();
        await _host.StartReceiverAsync();
    }

    public async Task DisposeAsync() => await _host.DisposeAsync();

    [Fact]
    public async Task Event_published_before_any_worker_ran_is_kept_and_delivered_and_both_orders_declare_the_same_topology()
    {
        // API first: nothing but the API has ever declared anything on this broker.
        await _host.StartApiAsync();
        var early = IoLaneHost.NewId("before-worker");
        await _host.SubmitAcceptedAsync(IoLaneHost.Webhook(early));
        Assert.Equal(1u, await _host.Rabbit.MessageCountAsync(IoLaneHost.QueueName));

        await _host.StartWorkerAsync();
        await _host.WaitForStateAsync(early, "succeeded", Deadline);
        Assert.Equal(1, (await _host.ReceivedAsync([early]))[early].Count);
        AssertNoPreconditionFailure();

        // Worker first: remove the lane's entities, start the worker alone, then a fresh API publishes.
        await _host.Worker!.TerminateAsync(TimeSpan.FromSeconds(60));
        await _host.Api!.TerminateAsync(TimeSpan.FromSeconds(60));
        await DeleteLaneEntitiesAsync();
        Assert.Null(await _host.Rabbit.MessageCountAsync(IoLaneHost.QueueName));

        await _host.StartWorkerAsync();
        Assert.Equal(0u, await _host.Rabbit.MessageCountAsync(IoLaneHost.QueueName));
        await _host.StartApiAsync();
        var late = IoLaneHost.NewId("after-worker");
        await _host.SubmitAcceptedAsync(IoLaneHost.Webhook(late));
        await _host.WaitForStateAsync(late, "succeeded", Deadline);
        AssertNoPreconditionFailure();

        // And the API restarting against a queue the worker declared (its publish binding re-declares it).
        await _host.Api!.TerminateAsync(TimeSpan.FromSeconds(60));
        await _host.StartApiAsync();
        var again = IoLaneHost.NewId("api-restarted");
        await _host.SubmitAcceptedAsync(IoLaneHost.Webhook(again));
        await _host.WaitForStateAsync(again, "succeeded", Deadline);
        AssertNoPreconditionFailure();
    }

    private void AssertNoPreconditionFailure()
    {
        foreach (var process in new[] { _host.Api!, _host.Worker! })
        {
            Assert.DoesNotContain("PRECONDITION_FAILED", process.OutputText, StringComparison.OrdinalIgnoreCase);
            Assert.DoesNotContain("inequivalent arg", process.OutputText, StringComparison.OrdinalIgnoreCase);
        }
    }

    private async Task DeleteLaneEntitiesAsync()
    {
        await using var connection = await _host.Rabbit.ConnectAsync();
        await using var channel = await connection.CreateChannelAsync();
        await channel.QueueDeleteAsync(IoLaneHost.QueueName, ifUnused: false, ifEmpty: false);
        await channel.ExchangeDeleteAsync(IoLaneHost.QueueName);
        await channel.ExchangeDeleteAsync("EventPipeline.Contracts:IoEventSubmitted");
    }
}
