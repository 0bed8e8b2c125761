using EventPipeline.Testing;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// A final status is written before the broker lets go of the event: a delivery that succeeds while Redis is down
/// ends <c>succeeded</c> once Redis is back, never <c>processing</c> forever with its message acknowledged.
/// Found by the chaos checker (two webhooks stuck in <c>processing</c> with an empty queue).
/// </summary>
[Collection(SharedIoLaneCollection.Name)]
public sealed class FinalStatusTests(SharedIoLane lane)
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(90);
    private IoLaneHost Host => lane.Host;

    [Fact]
    public async Task Success_delivered_while_redis_is_down_ends_succeeded_and_is_delivered_once()
    {
        // A one-second Redis timeout (a user's setting) so that each failed status write takes a second, not five.
        await Host.EnsureWorkerAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings__redis"] = Host.Redis.ConnectionString + ",asyncTimeout=1000,syncTimeout=1000",
        });
        var id = IoLaneHost.NewId("final");
        await Host.SubmitAcceptedAsync(IoLaneHost.Webhook(id, delayMs: 3000));
        await Host.WaitForStateAsync(id, "processing", Deadline);

        // Down, not paused: a write sent to a paused Redis still lands when it resumes; one sent to a dead one does not.
        await Host.Redis.KillAsync();
        try
        {
            // The downstream answers while Redis is out, and the worker's success write fails.
            await Eventually.TrueAsync(() => Task.FromResult(Host.Worker!.Output.Any(l =>
                    l.Contains(id, StringComparison.Ordinal) && l.Contains("unavailable", StringComparison.Ordinal))),
                Deadline, "the worker to fail writing the success", TimeSpan.FromMilliseconds(250));
        }
        finally
        {
            await Host.Redis.StartProcessAsync();
        }

        try
        {
            await Host.WaitForStateAsync(id, "succeeded", Deadline);
        }
        catch (TimeoutException ex)
        {
            var status = await Host.StatusAsync(id);
            throw new TimeoutException($"{id} is {status.State} after Redis came back; {IoLaneHost.QueueName} holds {await Host.Rabbit.MessageCountAsync(IoLaneHost.QueueName)} ready", ex);
        }

        var received = await Host.ReceivedAsync([id]);
        Assert.Equal(1, received[id].Count);
    }
}
