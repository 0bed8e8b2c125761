using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using EventPipeline.Testing;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// Scheduled events live in the broker, not in a process: workers killed with SIGKILL and both brokers restarted while
/// events wait lose none of them, and none starts before its time.
/// </summary>
public sealed class ScheduledRestartTests : IAsyncLifetime
{
    private PipelineHost _host = null!;

    public async Task InitializeAsync() => _host = await PipelineHost.StartAsync();

    public async Task DisposeAsync() => await _host.DisposeAsync();

    [Fact]
    public async Task Scheduled_events_survive_killed_workers_and_restarted_brokers_and_run_once_due()
    {
        var cpuWorker = await _host.StartCpuWorkerAsync();
        // noop.io calls no downstream: the port is never used.
        var ioWorker = await _host.StartIoWorkerAsync(receiverPort: 9);
        // Due after the restarts on most runs, so that the check below that none starts early bites (it is tested on its
        // own in DelayedEventTests); the premise that matters here, checked once both brokers are down, is that the
        // events were still waiting then (kills and stops take a few seconds; the starts took over 30 s in one loaded CI run).
        var notBefore = DateTimeOffset.UtcNow.AddSeconds(30);
        var events = Enumerable.Range(0, 40).Select(i => new
        {
            id = $"restart-{i}-{Guid.NewGuid():N}",
            type = i % 2 == 0 ? "noop.cpu" : "noop.io",
            payload = new { },
            notBefore = notBefore.ToString("O"),
        }).ToList();
        Assert.Equal(HttpStatusCode.Accepted, (await _host.Submit.PostAsJsonAsync("/events/batch", new { events })).StatusCode);

        await cpuWorker.KillAsync();
        await ioWorker.KillAsync();
        await using (var redis = await _host.Redis.ConnectAsync())
        {
            // A clean restart: SHUTDOWN writes the AOF out (kill -9 may lose its last second, as documented).
            try
            {
                await redis.GetDatabase().ExecuteAsync("SHUTDOWN");
            }
            catch (StackExchange.Redis.RedisConnectionException)
            {
                // the server closes the connection as it exits
            }
        }

        await Eventually.TrueAsync(() => Task.FromResult(!_host.Redis.IsRunning), TimeSpan.FromSeconds(30), "redis-server to exit");
        await _host.Rabbit.StopAsync();
        // The premise: both brokers went down while the events were still waiting for their time, so only what the
        // brokers had written to disk can bring them back. Checked here, not after the starts: a broker slow to start
        // again (a loaded CI machine took over 30 s for both) does not change what they held when they stopped, and no
        // worker runs until after the starts.
        Assert.True(DateTimeOffset.UtcNow < notBefore, "the brokers stopped after the events were due: the test proves nothing");
        await _host.Redis.StartProcessAsync();
        await _host.Rabbit.StartServerAsync();
        await _host.StartCpuWorkerAsync();
        await _host.StartIoWorkerAsync(receiverPort: 9);

        foreach (var e in events)
        {
            var status = await _host.WaitForStateAsync(e.id, "succeeded", TimeSpan.FromSeconds(90));
            var started = status.GetProperty("startedAt").GetDateTimeOffset();
            Assert.True(started >= notBefore.AddMilliseconds(-1), $"{e.id} started at {started:O}, before {notBefore:O}");
            Assert.Equal(1, status.GetProperty("attempts").GetInt32());
        }
    }
}
