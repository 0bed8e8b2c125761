using System.Text.Json.Nodes;
using EventPipeline.Testing;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>A message that kills the worker every time ends in the error queue by the broker's delivery limit.</summary>
[Collection(SharedIoLaneCollection.Name)]
public sealed class PoisonMessageTests(SharedIoLane lane, ITestOutputHelper output)
{
    private const int DeliveryLimit = 3;
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(240);
    private IoLaneHost Host => lane.Host;

    [Fact]
    public async Task Crash_looping_event_is_dead_lettered_by_the_delivery_limit_and_the_lane_keeps_flowing()
    {
        await Host.EnsureWorkerAsync();
        var poison = IoLaneHost.NewId("poison");
        await Host.SubmitAcceptedAsync(new JsonObject { ["id"] = poison, ["type"] = "test.crash", ["payload"] = new JsonObject { ["lane"] = "io" } });

        // Play the orchestrator: start the worker again whenever the poison took it down.
        var crashes = 0;
        await Eventually.TrueAsync(async () =>
        {
            if (Host.Worker!.HasExited)
            {
                crashes++;
                output.WriteLine($"worker exited with {Host.Worker.ExitCode}; restart {crashes}");
                // Not waiting for ready: the poison may take the new worker down before it ever reports ready.
                await Host.StartWorkerAsync(waitUntilReady: false);
            }

            return await Host.FindInQueueAsync(IoLaneHost.ErrorQueueName, poison) is not null;
        }, Deadline, "the crash-looping event to reach events-io_error", TimeSpan.FromMilliseconds(250));

        // The broker dead-letters on the return of the last delivery, i.e. once the worker holding it died; that
        // worker may have been started (and found ready) in the probe's last round.
        try
        {
            await Host.Worker!.WaitForExitAsync(new CancellationTokenSource(TimeSpan.FromSeconds(10)).Token);
            crashes++;
        }
        catch (OperationCanceledException)
        {
        }

        var dead = (await Host.FindInQueueAsync(IoLaneHost.ErrorQueueName, poison))!;
        output.WriteLine(string.Join("\n", dead.Headers.Select(h => $"{h.Key}: {h.Value}")));
        Assert.Equal("delivery_limit", dead.Headers["x-first-death-reason"]);
        Assert.Equal(IoLaneHost.QueueName, dead.Headers["x-first-death-queue"]);
        // Deliveries 0..limit each took the worker down; the next one is the broker's dead-letter instead.
        Assert.Equal(DeliveryLimit + 1, crashes);

        // The dead letter's status is written by a worker (BrokerDeadLetterStatusConsumer), as the orchestrator would
        // have one running: the last crash may have been seen only in the wait above, with no worker started after it.
        if (Host.Worker!.HasExited)
        {
            await Host.StartWorkerAsync();
        }

        await Host.WaitForStateAsync(poison, "dead", Deadline);
        Assert.Contains("delivery_limit", (await Host.StatusAsync(poison)).Error);

        // The lane flows on with a live worker.

        var after = Enumerable.Range(0, 20).Select(i => IoLaneHost.NewId($"after-poison-{i}")).ToList();
        await Host.SubmitBatchesAsync(after.Select(id => IoLaneHost.Webhook(id)).ToList());
        foreach (var id in after)
        {
            await Host.WaitForStateAsync(id, "succeeded", TimeSpan.FromSeconds(60));
        }

        Assert.False(Host.Worker.HasExited);
    }
}
