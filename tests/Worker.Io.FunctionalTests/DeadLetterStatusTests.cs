using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using EventPipeline.Testing;
using RabbitMQ.Client;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>The status of the I/O lane's dead letters: written through a long Redis outage, and kept as long as they are.</summary>
[Collection(SharedIoLaneCollection.Name)]
public sealed class DeadLetterStatusTests(SharedIoLane lane, ITestOutputHelper output)
{
    private const string StatusQueue = IoLaneHost.ErrorQueueName + "-status";
    private const string StatusErrorQueue = StatusQueue + "_error";
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(90);
    private IoLaneHost Host => lane.Host;

    [Fact]
    public async Task Broker_dead_lettered_event_ends_dead_after_a_long_redis_outage()
    {
        // A one-second Redis timeout (a user's setting) so that each failed status write takes a second, not five.
        await Host.EnsureWorkerAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings__redis"] = Host.Redis.ConnectionString + ",asyncTimeout=1000,syncTimeout=1000",
        });
        var id = IoLaneHost.NewId("outage");
        var db = Host.StatusConnection.GetDatabase();
        // What the worker that kept dying left behind.
        await db.HashSetAsync($"event:{id}", [new("id", id), new("type", "webhook.post"), new("lane", "io"), new("state", "processing"), new("attempts", 4)]);
        await using (ProcessPause.Of(Host.Redis.Pid))
        {
            await PublishBrokerDeadLetterAsync(id);

            // Redis stays out past the old give-up (six attempts, one second apart): until either the status copy went to
            // its own error queue, or the worker has failed to write the status more often than that, and kept the copy.
            var outage = Stopwatch.StartNew();
            await Eventually.TrueAsync(async () =>
                    await Host.Rabbit.MessageCountAsync(StatusErrorQueue) > 0
                    || Host.Worker!.Output.Count(l => l.Contains(id, StringComparison.Ordinal) && l.Contains("unavailable", StringComparison.Ordinal)) >= 8,
                Deadline, "the status consumer to give up or to keep trying through the outage", TimeSpan.FromMilliseconds(250));
            output.WriteLine($"Redis paused for {outage.Elapsed}");
            var gaveUp = await Host.Rabbit.MessageCountAsync(StatusErrorQueue) ?? 0;
            Assert.True(gaveUp == 0, $"after {outage.Elapsed.TotalSeconds:F0} s without Redis the status copy of {id} was moved to {StatusErrorQueue}, which nothing reads");
        }

        await Host.WaitForStateAsync(id, "dead", Deadline);
        Assert.Contains("delivery_limit", (await Host.StatusAsync(id)).Error);
        await Eventually.TrueAsync(async () => await Host.Rabbit.MessageCountAsync(StatusQueue) == 0, Deadline, $"{StatusQueue} to be drained");
        Assert.True((await Host.Rabbit.MessageCountAsync(StatusErrorQueue) ?? 0) == 0, $"{StatusErrorQueue} holds messages");
    }

    [Fact]
    public async Task Dead_event_status_outlives_the_status_retention_while_its_dead_letter_exists()
    {
        await Host.EnsureWorkerAsync(new Dictionary<string, string?> { ["IoLane__MaxAttempts"] = "1", ["Status__Retention"] = "00:00:01" });
        var failing = IoLaneHost.NewId("dead");
        var fine = IoLaneHost.NewId("fine");
        await Host.SubmitAcceptedAsync(new JsonObject { ["id"] = failing, ["type"] = "test.fail", ["payload"] = new JsonObject { ["lane"] = "io" } });
        await Host.WaitForStateAsync(failing, "dead", Deadline);
        // The lane writes "dead" before MassTransit moves the message to the error queue (its first fault in a fresh
        // worker builds the error transport then): wait for the dead letter itself before the retention clock starts.
        await Eventually.TrueAsync(async () => await Host.FindInQueueAsync(IoLaneHost.ErrorQueueName, failing) is not null,
            Deadline, $"the dead letter of {failing} to reach {IoLaneHost.ErrorQueueName}");
        await Host.SubmitAcceptedAsync(new JsonObject { ["id"] = fine, ["type"] = "noop.io", ["payload"] = new JsonObject() });
        await Host.WaitForStateAsync(fine, "succeeded", Deadline);

        // The event that succeeded after the other died keeps its status for the retention: once it is gone, the dead
        // event's status has outlived the normal retention, and must still be there with its dead letter.
        await Eventually.TrueAsync(async () => !await Host.StatusConnection.GetDatabase().KeyExistsAsync($"event:{fine}"),
            Deadline, "the succeeded event's status to expire after Status:Retention");
        Assert.NotNull(await Host.FindInQueueAsync(IoLaneHost.ErrorQueueName, failing));
        var state = (await Host.StatusAsync(failing)).State;
        Assert.True(state == "dead", $"the dead letter of {failing} exists but its status is {state ?? "gone (GET /events/{id} answers 404)"}");
        // Kept for the dead-letter retention (14 days by default) plus the status retention, whichever wrote last.
        var ttl = await Host.StatusConnection.GetDatabase().KeyTimeToLiveAsync($"event:{failing}");
        Assert.True(ttl > TimeSpan.FromDays(13), $"the dead event's status expires in {ttl}, before its dead letter would");
    }

    /// <summary>A copy of what RabbitMQ dead-letters into the error exchange after the delivery limit.</summary>
    private async Task PublishBrokerDeadLetterAsync(string id)
    {
        var envelope = JsonSerializer.SerializeToUtf8Bytes(new
        {
            messageId = Guid.NewGuid(),
            messageType = new[] { "urn:message:EventPipeline.Contracts:IoEventSubmitted" },
            message = new { eventId = id, type = "webhook.post", payload = """{"n":1}""", acceptedAt = DateTimeOffset.UtcNow },
        });
        await using var connection = await Host.Rabbit.ConnectAsync();
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(true, true));
        var properties = new BasicProperties
        {
            Persistent = true,
            MessageId = Guid.NewGuid().ToString(),
            ContentType = "application/vnd.masstransit+json",
            Headers = new Dictionary<string, object?>
            {
                ["x-first-death-reason"] = "delivery_limit",
                ["x-first-death-queue"] = IoLaneHost.QueueName,
                ["x-first-death-exchange"] = "",
            },
        };
        await channel.BasicPublishAsync(IoLaneHost.ErrorQueueName, "", true, properties, envelope);
    }
}
