using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using EventPipeline.Testing;
using RabbitMQ.Client;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// The dead-letter endpoints answer 503 with Retry-After, never 500, while RabbitMQ is paused (slow, not dead).
/// Found by the chaos checker: <c>GET /dead-letters/io</c> answered 500 during a SIGSTOP of rabbitmq-server.
/// </summary>
public sealed class DeadLetterOutageTests : IAsyncLifetime
{
    private PipelineHost _host = null!;

    /// <summary>Between a stalled scan's hold with its hand-back bounded (~7.5 s) and without (~12 s).</summary>
    private static readonly TimeSpan ScanQueueTimeout = TimeSpan.FromSeconds(10);

    public async Task InitializeAsync() => _host = await PipelineHost.StartAsync(new Dictionary<string, string?>
    {
        ["DeadLetters__ScanQueueTimeout"] = ScanQueueTimeout.ToString(),
    });

    public async Task DisposeAsync() => await _host.DisposeAsync();

    [Fact]
    public async Task Io_dead_letter_list_while_rabbitmq_is_paused_is_503_not_500()
    {
        // The API's own RabbitMQ connection is open (a first list), then the broker stops answering.
        Assert.Equal(HttpStatusCode.OK, (await _host.Admin.GetAsync("/dead-letters/io")).StatusCode);
        var rabbitPid = int.Parse((await _host.Rabbit.CtlAsync("eval", "list_to_integer(os:getpid()).")).Trim().Split('\n').Last(),
            System.Globalization.CultureInfo.InvariantCulture);
        HttpResponseMessage response;
        await using (ProcessPause.Of(rabbitPid))
        {
            response = await _host.Admin.GetAsync("/dead-letters/io");
        }

        using (response)
        {
            Assert.True(response.StatusCode == HttpStatusCode.ServiceUnavailable,
                $"answered {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}\n{string.Join("\n", _host.Api.Output.TakeLast(20))}");
            Assert.True(response.Headers.Contains("Retry-After"));
        }

        // The scan that failed let the next one start: once the broker answers again a list succeeds, and is never told
        // that another operation is running (nothing else runs here).
        var after = await Eventually.ReturnsAsync(async () =>
        {
            using var next = await _host.Admin.GetAsync("/dead-letters/io");
            Assert.True(next.StatusCode != HttpStatusCode.Conflict,
                $"a list after the failed one answered 409: {await next.Content.ReadAsStringAsync()}");
            return next.StatusCode;
        }, status => status == HttpStatusCode.OK, TimeSpan.FromSeconds(60), "a list to succeed after the broker resumed", TimeSpan.FromMilliseconds(200));
        Assert.Equal(HttpStatusCode.OK, after);
    }

    /// <summary>
    /// A scan the broker stops answering mid-read holds this process's scan turn for its stalled read (the client's 5 s
    /// continuation timeout) plus a bounded hand-back (a 2 s count, a 0.5 s close): an operation queued behind it gets its
    /// turn within <see cref="ScanQueueTimeout"/> (then 503, as the broker is still paused), not 409 busy.
    /// </summary>
    [Fact]
    public async Task A_scan_stalled_by_a_paused_broker_hands_over_to_the_next_operation_within_its_wait()
    {
        const int total = 2000;
        await _host.WaitUntilIoErrorQueueIsBoundAsync();
        await using var connection = await _host.Rabbit.ConnectAsync();
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(true, true));
        var before = (long)(await channel.QueueDeclarePassiveAsync("events-io_error")).MessageCount;
        for (var i = 0; i < total; i++)
        {
            var id = $"stall-{i}-{Guid.NewGuid():N}";
            var envelope = JsonSerializer.SerializeToUtf8Bytes(new { messageId = Guid.NewGuid(), message = new { eventId = id, type = "webhook.post", payload = "{}" } });
            await channel.BasicPublishAsync("events-io_error", "", true,
                new BasicProperties { Persistent = true, MessageId = id, Headers = new Dictionary<string, object?> { ["MT-Fault-ExceptionType"] = "Test" } }, envelope);
        }

        var rabbitPid = int.Parse((await _host.Rabbit.CtlAsync("eval", "list_to_integer(os:getpid()).")).Trim().Split('\n').Last(),
            System.Globalization.CultureInfo.InvariantCulture);
        // A deep list (the page after the last but one reads every message); once it holds some, the broker stops.
        var list = _host.Admin.GetAsync($"/dead-letters/io?limit=1&after={before + total - 2}");
        await Eventually.TrueAsync(async () => list.IsCompleted || (await channel.QueueDeclarePassiveAsync("events-io_error")).MessageCount < before + total,
            TimeSpan.FromSeconds(60), "the list to start reading", TimeSpan.FromMilliseconds(1));
        Assert.False(list.IsCompleted, "the list finished before the broker could be paused mid-read");
        HttpResponseMessage stalled, queued;
        TimeSpan stalledAfter, queuedAfter;
        await using (ProcessPause.Of(rabbitPid))
        {
            var paused = System.Diagnostics.Stopwatch.StartNew();
            var next = _host.Admin.GetAsync($"/dead-letters/io/no-such-{Guid.NewGuid():N}");
            stalled = await list;
            stalledAfter = paused.Elapsed;
            queued = await next;
            queuedAfter = paused.Elapsed;
        }

        using (stalled)
        using (queued)
        {
            Assert.True(stalled.StatusCode == HttpStatusCode.ServiceUnavailable,
                $"the stalled list answered {(int)stalled.StatusCode}: {await stalled.Content.ReadAsStringAsync()}");
            Assert.True(queued.StatusCode == HttpStatusCode.ServiceUnavailable,
                $"a lookup queued behind the stalled scan answered {(int)queued.StatusCode} after {queuedAfter.TotalSeconds:F1} s (the stalled list answered after {stalledAfter.TotalSeconds:F1} s; expected 503 once the lookup got its turn within {ScanQueueTimeout.TotalSeconds} s): {await queued.Content.ReadAsStringAsync()}");
        }

        await Eventually.TrueAsync(async () =>
        {
            using var cleanup = await _host.Admin.DeleteAsync("/dead-letters/io?max=1000");
            return cleanup.StatusCode == HttpStatusCode.OK && (await cleanup.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("remaining").GetInt64() == 0;
        }, TimeSpan.FromSeconds(60), "the injected dead letters to be deleted", TimeSpan.FromMilliseconds(200));
    }
}
