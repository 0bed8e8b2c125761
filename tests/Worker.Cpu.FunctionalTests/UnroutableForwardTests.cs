using System.Text;
using System.Text.Json;
using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using RabbitMQ.Client;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

/// <summary>
/// The hand-off to the I/O lane when RabbitMQ holds no queue for it (deleted, or lost in a broker reset while the
/// worker's connection lived on): the broker confirms an unroutable publish unless it is mandatory, so only a
/// mandatory publish tells the worker the event went nowhere.
/// </summary>
[Collection(CpuLaneCollection.Name)]
public sealed class UnroutableForwardTests(SharedRabbitMq rabbit, ITestOutputHelper output)
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(90);

    /// <summary>MassTransit's exchange for the message type (namespace:name); the publisher binds the lane's queue to it.</summary>
    private const string MessageExchange = "EventPipeline.Contracts:IoEventSubmitted";

    [Fact]
    public async Task Forward_the_broker_cannot_route_is_retried_not_acknowledged()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        await lane.UseRabbitMqAsync(rabbit);
        var worker = await lane.StartWorkerAsync(new Dictionary<string, string?> { ["CpuLane__MaxAttempts"] = "100" });
        await using var connection = await lane.RabbitMq!.ConnectAsync();
        await using var channel = await connection.CreateChannelAsync();
        try
        {
            // A first forward: the worker's publisher declares the queue and its binding (once per channel).
            var first = "routed-" + Guid.NewGuid().ToString("N");
            await lane.EnqueueAsync((first, "hash.pbkdf2", Chained(first)));
            await lane.WaitForStateAsync(first, "succeeded", Deadline);
            Assert.True(await FindForwardedAsync(channel, first + ".then"), "the first forward is not in events-io");

            // The queue goes away under the live connection; the publisher still believes it declared it.
            await channel.QueueDeleteAsync(IoLaneTopology.QueueName);

            var second = "unroutable-" + Guid.NewGuid().ToString("N");
            await lane.EnqueueAsync((second, "hash.pbkdf2", Chained(second)));
            var status = await Eventually.ReturnsAsync(() => lane.StatusAsync(second),
                s => s.GetValueOrDefault("state") is "retrying" or "dead" or "succeeded", Deadline, $"{second} to be tried");
            Assert.True(status["state"] == "retrying",
                $"{second} is {status["state"]} although its next stage reached no queue (error: {status.GetValueOrDefault("error")})");
            Assert.Null((await lane.StatusAsync(second + ".then")).GetValueOrDefault("state"));

            // The queue comes back (as a restarted API or Worker.Io would declare it): the retry hands the result on.
            await DeclareLaneQueueAsync(channel);
            await lane.WaitForStateAsync(second, "succeeded", Deadline);
            Assert.True(await Eventually.ReturnsAsync(() => FindForwardedAsync(channel, second + ".then"), found => found, Deadline, "the retried forward in events-io"));
            Assert.Equal("accepted", (await lane.StatusAsync(second + ".then"))["state"]);
        }
        catch
        {
            output.WriteLine(worker.OutputText);
            throw;
        }
        finally
        {
            // Leave no hand-made queue behind: the next process declares its own.
            await channel.QueueDeleteAsync(IoLaneTopology.QueueName);
        }
    }

    private static object Chained(string id) => new
    {
        data = Bursts.DataOf(id),
        iterations = 1000,
        then = new { type = "noop.io", payload = new { id } },
    };

    /// <summary>Takes messages off events-io until the one with this event id turns up (others are left acked: test leftovers).</summary>
    private static async Task<bool> FindForwardedAsync(IChannel channel, string eventId)
    {
        while (await channel.BasicGetAsync(IoLaneTopology.QueueName, autoAck: true) is { } message)
        {
            var body = JsonDocument.Parse(Encoding.UTF8.GetString(message.Body.Span)).RootElement;
            if (body.GetProperty("message").GetProperty("eventId").GetString() == eventId)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>The lane's queue with the arguments <see cref="IoLaneTopology.ConfigureQueue"/> gives it, bound as the publishers bind it.</summary>
    private static async Task DeclareLaneQueueAsync(IChannel channel)
    {
        await channel.QueueDeclareAsync(IoLaneTopology.QueueName, durable: true, exclusive: false, autoDelete: false, arguments: new Dictionary<string, object?>
        {
            ["x-queue-type"] = "quorum",
            ["x-delivery-limit"] = IoLaneTopology.DeliveryLimit,
            ["x-dead-letter-exchange"] = IoLaneTopology.ErrorQueueName,
            ["x-dead-letter-strategy"] = "at-least-once",
            ["x-overflow"] = "reject-publish",
        });
        await channel.QueueBindAsync(IoLaneTopology.QueueName, MessageExchange, "");
    }
}
