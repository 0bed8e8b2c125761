using System.Collections.Concurrent;
using System.Net;
using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

[Collection(CpuLaneCollection.Name)]
public sealed class RedisRestartTests(SharedRabbitMq rabbit, ITestOutputHelper output)
{
    [Fact]
    public async Task Redis_killed_and_restarted_during_a_burst_processes_every_event_that_got_a_202()
    {
        await using var lane = await CpuLaneHarness.StartAsync();
        await lane.StartApiAsync(rabbit);
        await Task.WhenAll(lane.StartWorkerAsync(), lane.StartWorkerAsync());

        // Clients keep submitting through the outage; only what got a 202 is owed. 503s are expected while Redis is down.
        var accepted = new ConcurrentBag<string>();
        var refused = 0;
        using var stop = new CancellationTokenSource();
        var tag = Guid.NewGuid().ToString("N")[..8];
        var next = 0;
        var clients = Enumerable.Range(0, 3).Select(_ => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                var batch = Enumerable.Range(0, 50).Select(_ => Bursts.Pbkdf2($"rr-{Interlocked.Increment(ref next)}-{tag}", 1)).ToArray();
                try
                {
                    var ids = await lane.SubmitBatchAsync(batch);
                    if (ids is null)
                    {
                        Interlocked.Add(ref refused, batch.Length);
                        await Task.Delay(20);
                        continue;
                    }

                    foreach (var id in ids)
                    {
                        accepted.Add(id);
                    }
                }
                catch (HttpRequestException)
                {
                    Interlocked.Add(ref refused, batch.Length);
                }
            }
        })).ToArray();

        await Eventually.TrueAsync(() => Task.FromResult(accepted.Count >= 2_000), TimeSpan.FromMinutes(2), "a burst under way");
        await lane.Redis.KillAsync();
        var acceptedBeforeRestart = accepted.Count;
        await lane.Redis.StartProcessAsync(); // same port, same data directory: it replays its AOF
        output.WriteLine($"Redis killed and restarted with {acceptedBeforeRestart} events accepted");
        await Eventually.TrueAsync(() => Task.FromResult(accepted.Count >= acceptedBeforeRestart + 2_000), TimeSpan.FromMinutes(2),
            "the API to accept events again after the restart");
        await stop.CancelAsync();
        await Task.WhenAll(clients);

        var ids = accepted.ToArray();
        output.WriteLine($"{ids.Length} accepted (202), {refused} refused (503) during the outage");
        Assert.True(refused > 0, "the outage was never seen by a client: the test did not test anything");
        await lane.ConnectAsync();
        await Eventually.TrueAsync(async () => await lane.CountInStateAsync(ids, "succeeded") == ids.Length, TimeSpan.FromMinutes(3),
            "every accepted event to succeed", TimeSpan.FromMilliseconds(500));

        var outcomes = await lane.ReadAsync(ids);
        Assert.Equal([], outcomes.Where(o => o.Value.Completions != 1).Select(o => $"{o.Key}: {o.Value.Completions}"));
        Assert.Equal([], outcomes.Where(o => o.Value.Result != Bursts.ExpectedPbkdf2(o.Key, 1)).Select(o => o.Key));
        Assert.Empty(await lane.DeadLettersAsync());
        Assert.Equal(0, await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream));
    }
}
