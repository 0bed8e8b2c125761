using System.Net;
using EventPipeline.Testing;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// The dead-letter endpoints answer 503 with Retry-After, never 500, while RabbitMQ is paused (slow, not dead).
/// Found by the chaos checker: <c>GET /dead-letters/io</c> answered 500 during a SIGSTOP of rabbitmq-server.
/// </summary>
public sealed class DeadLetterOutageTests : IAsyncLifetime
{
    private PipelineHost _host = null!;

    public async Task InitializeAsync() => _host = await PipelineHost.StartAsync();

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
}
