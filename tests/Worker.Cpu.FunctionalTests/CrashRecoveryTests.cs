using System.Security.Cryptography;
using System.Text;
using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using StackExchange.Redis;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

[Collection(CpuLaneCollection.Name)]
public sealed class CrashRecoveryTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Killed_worker_mid_task_is_claimed_and_completed_by_another_worker()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        var first = await lane.StartWorkerAsync(new Dictionary<string, string?> { ["CpuLane__Handlers"] = "1" });
        var id = "long-" + Guid.NewGuid().ToString("N");
        const int iterations = 10_000_000; // seconds of work: the kill lands while it runs
        await lane.EnqueueAsync((id, "hash.pbkdf2", new { data = "survives a crash", iterations }));

        await lane.WaitForStateAsync(id, "processing", Patience);
        var pending = await lane.Db.StreamPendingMessagesAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, 10, RedisValue.Null);
        Assert.Single(pending);
        Assert.EndsWith($"-{first.Pid}", pending[0].ConsumerName.ToString());

        await first.KillAsync();
        Assert.Equal("processing", (await lane.StatusAsync(id))["state"]); // it really died mid-task

        var second = await lane.StartWorkerAsync();
        var status = await lane.WaitForStateAsync(id, "succeeded", Patience);

        var expected = Convert.ToHexStringLower(Rfc2898DeriveBytes.Pbkdf2(
            Encoding.UTF8.GetBytes("survives a crash"), Encoding.UTF8.GetBytes(id), iterations, HashAlgorithmName.SHA256, 32));
        Assert.Equal(expected, status["result"]);
        Assert.Equal(1, await lane.Statuses.GetCompletionsAsync(id));
        Assert.Contains(second.Output, line => line.Contains("Claimed stale event", StringComparison.Ordinal) && line.Contains(id, StringComparison.Ordinal));
        Assert.Equal(0, (await lane.Db.StreamPendingAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group)).PendingMessageCount);
    }

    [Fact]
    public async Task Crash_looping_poison_is_dead_lettered_after_the_delivery_cap_and_events_behind_it_succeed()
    {
        const int deliveryCap = 2;
        var settings = new Dictionary<string, string?>
        {
            ["CpuLane__Handlers"] = "2",
            ["CpuLane__MaxDeliveries"] = deliveryCap.ToString(),
        };
        await using var lane = await CpuLaneHarness.StartAsync();
        var poison = "poison-" + Guid.NewGuid().ToString("N");
        var behind = Enumerable.Range(0, 30).Select(i => $"behind-{i}-{Guid.NewGuid():N}").ToArray();
        await lane.EnqueueAsync([(poison, "test.crash", new { lane = "cpu" }),
            .. behind.Select(id => (id, "hash.pbkdf2", (object)new { data = id, iterations = 20_000 }))]);

        // A supervisor, as Kubernetes would be: whenever the worker dies, start another one.
        var crashes = 0;
        var worker = await lane.StartWorkerAsync(settings, waitUntilReady: false);
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(3);
        while ((await lane.StatusAsync(poison)).GetValueOrDefault("state") != "dead" || await lane.CountInStateAsync(behind, "succeeded") < behind.Length)
        {
            Assert.True(DateTime.UtcNow < deadline, $"lane did not settle; {crashes} crashes; poison {(await lane.StatusAsync(poison)).GetValueOrDefault("state")}");
            if (worker.HasExited)
            {
                crashes++;
                output.WriteLine($"worker {worker.Pid} exited with {worker.ExitCode}; restarting");
                worker = await lane.StartWorkerAsync(settings, waitUntilReady: false);
            }

            await Task.Delay(50);
        }

        Assert.Equal(deliveryCap, crashes); // ran exactly up to the cap, never once more
        var dead = Assert.Single(await lane.DeadLettersAsync());
        Assert.Equal(poison, dead["id"].ToString());
        Assert.Equal("delivery-limit", dead["reason"].ToString());
        Assert.Equal("DeliveryLimitExceeded", dead["errorType"].ToString());
        Assert.Equal("dead", (await lane.StatusAsync(poison))["state"]);
        Assert.All((await lane.StatesAsync(behind)).Values, s => Assert.Equal(1, s.Completions));
        Assert.Equal(0, await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream));
    }
}
