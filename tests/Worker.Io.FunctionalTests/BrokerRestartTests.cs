using System.Collections.Concurrent;
using System.Net;
using EventPipeline.Testing;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>RabbitMQ dies (kill -9) and comes back on the same data directory and node name during a burst.</summary>
public sealed class BrokerRestartTests(ITestOutputHelper output) : IAsyncLifetime
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(180);
    private IoLaneHost _host = null!;

    public async Task InitializeAsync() => _host = await IoLaneHost.StartAsync();

    public async Task DisposeAsync() => await _host.DisposeAsync();

    [Fact]
    public async Task Broker_killed_and_restarted_during_a_burst_delivers_every_accepted_event()
    {
        var workerPid = _host.Worker!.Pid;
        var accepted = new ConcurrentBag<string>();
        var acceptedAfterRestart = 0;
        var unavailable = 0;
        var unexpected = new ConcurrentBag<string>();
        var restarted = false;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var restartedAt = TimeSpan.Zero;
        var firstAcceptAfterRestart = TimeSpan.Zero;
        string? lastUnavailable = null;
        using var stop = new CancellationTokenSource(TimeSpan.FromMinutes(4));

        async Task SubmitLoopAsync(int loop)
        {
            for (var i = 0; !stop.IsCancellationRequested; i++)
            {
                if (Volatile.Read(ref restarted) && Volatile.Read(ref acceptedAfterRestart) >= 100)
                {
                    return;
                }

                var id = IoLaneHost.NewId($"broker-{loop}-{i}");
                // The API must answer, 202 or 503, well before this: a hang fails the test.
                using var answerWithin = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                using var response = await _host.SubmitAsync(IoLaneHost.Webhook(id, delayMs: 20), answerWithin.Token);
                switch (response.StatusCode)
                {
                    case HttpStatusCode.Accepted:
                        accepted.Add(id);
                        if (Volatile.Read(ref restarted) && Interlocked.Increment(ref acceptedAfterRestart) == 1)
                        {
                            firstAcceptAfterRestart = clock.Elapsed;
                        }

                        break;
                    case HttpStatusCode.ServiceUnavailable:
                        Assert.NotNull(response.Headers.RetryAfter);
                        Interlocked.Increment(ref unavailable);
                        if (Volatile.Read(ref restarted))
                        {
                            Volatile.Write(ref lastUnavailable, $"{clock.Elapsed.TotalSeconds:F1} s: {await response.Content.ReadAsStringAsync()}");
                        }

                        break;
                    default:
                        unexpected.Add($"{(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
                        break;
                }
            }
        }

        async Task ChaosAsync()
        {
            await Eventually.TrueAsync(() => Task.FromResult(accepted.Count >= 100), Deadline, "100 events accepted before the crash");
            await _host.Rabbit.KillAsync();
            output.WriteLine($"rabbitmq killed after {accepted.Count} accepted events");
            await Eventually.TrueAsync(() => Task.FromResult(Volatile.Read(ref unavailable) >= 4), Deadline, "the API to answer 503 while the broker is down");
            output.WriteLine($"{clock.Elapsed.TotalSeconds:F1} s: rabbitmq killed; {unavailable} answered 503 so far");
            await _host.Rabbit.StartServerAsync();
            restartedAt = clock.Elapsed;
            Volatile.Write(ref restarted, true);
            output.WriteLine($"{restartedAt.TotalSeconds:F1} s: rabbitmq restarted; {accepted.Count} accepted, {unavailable} answered 503 so far");
        }

        await Task.WhenAll(ChaosAsync(), SubmitLoopAsync(0), SubmitLoopAsync(1), SubmitLoopAsync(2));

        Assert.Empty(unexpected);
        output.WriteLine($"{clock.Elapsed.TotalSeconds:F1} s: submissions stopped; {acceptedAfterRestart} accepted after the restart, the first at {firstAcceptAfterRestart.TotalSeconds:F1} s");
        if (acceptedAfterRestart < 100)
        {
            // What a CI log's tail shows of a failure is the message and the last lines of this output: the broker's log,
            // then the API's, then the distinct exceptions the API logged.
            output.WriteLine("rabbitmq log:\n" + string.Join('\n', _host.Rabbit.LastLogLines(20)));
            output.WriteLine("API log:\n" + string.Join('\n', _host.Api!.Output.TakeLast(30)));
            output.WriteLine("API exceptions: " + string.Join(" | ", _host.Api.Output.Where(l => l.Contains("Exception", StringComparison.Ordinal)).Select(l => l.Trim()).Distinct().TakeLast(4)));
        }

        Assert.True(acceptedAfterRestart >= 100,
            $"the API did not accept events again after the broker came back ({restartedAt.TotalSeconds:F1} s): {acceptedAfterRestart} accepted by " +
            $"{clock.Elapsed.TotalSeconds:F1} s; the last 503 after it, at {lastUnavailable}");
        var ids = accepted.ToList();
        await Eventually.TrueAsync(async () => (await _host.ReceivedAsync(ids)).Values.All(r => r.Count >= 1),
            Deadline, "every event that got a 202 to reach the receiver", TimeSpan.FromMilliseconds(500));

        var received = await _host.ReceivedAsync(ids);
        output.WriteLine($"{ids.Count} accepted (202), {unavailable} answered 503; all delivered; " +
                         $"{received.Values.Sum(r => r.Count - 1)} duplicate deliveries");
        // The same worker process reconnected by itself.
        Assert.False(_host.Worker.HasExited);
        Assert.Equal(workerPid, _host.Worker.Pid);
    }
}
