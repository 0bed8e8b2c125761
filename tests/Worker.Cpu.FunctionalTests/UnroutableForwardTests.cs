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

            // The first try publishes on the pooled channel, gets the broker's return (312 NO_ROUTE) and fails; the retry
            // takes a fresh channel, which declares the lane again, and hands the result on. Only the final state is
            // asserted: "retrying" lasts one retry delay (100-200 ms here), which a poll under load can miss (it did once:
            // "… is succeeded although its next stage reached no queue", with attempts = 2 in the worker's log).
            var second = "unroutable-" + Guid.NewGuid().ToString("N");
            await lane.EnqueueAsync((second, "hash.pbkdf2", Chained(second)));
            var status = await Eventually.ReturnsAsync(() => lane.StatusAsync(second),
                s => s.GetValueOrDefault("state") is "dead" or "succeeded", Deadline, $"{second} to finish");
            Assert.Equal("succeeded", status["state"]);
            // An unroutable forward counted as done would finish at attempt 1 (and its message would be lost).
            Assert.True(int.Parse(status["attempts"]) >= 2,
                $"{second} succeeded at attempt {status["attempts"]} although its first forward reached no queue");

            // Exactly the retry's copy is in events-io: the first try's went nowhere.
            Assert.Equal(1, await CountForwardedAsync(channel, second + ".then"));
            Assert.Equal("accepted", (await lane.StatusAsync(second + ".then"))["state"]);
        }
        catch
        {
            output.WriteLine(worker.OutputText);
            throw;
        }
        finally
        {
            // Leave no queue behind with this test's leftovers in it: the next process declares its own.
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

    /// <summary>Takes every message off events-io (all acked: test leftovers) and counts those with this event id.</summary>
    private static async Task<int> CountForwardedAsync(IChannel channel, string eventId)
    {
        var count = 0;
        while (await channel.BasicGetAsync(IoLaneTopology.QueueName, autoAck: true) is { } message)
        {
            var body = JsonDocument.Parse(Encoding.UTF8.GetString(message.Body.Span)).RootElement;
            if (body.GetProperty("message").GetProperty("eventId").GetString() == eventId)
            {
                count++;
            }
        }

        return count;
    }
}
