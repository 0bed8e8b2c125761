using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using EventPipeline.Testing;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// A lane whose lag passes its limit refuses new work with 429 + Retry-After while the other lane keeps accepting;
/// once a worker drains it, submissions go through again.
/// </summary>
public sealed class BackpressureTests : IAsyncLifetime
{
    private const int MaxLag = 5;
    private PipelineHost _host = null!;

    public async Task InitializeAsync() => _host = await PipelineHost.StartAsync(new Dictionary<string, string?>
    {
        ["Backpressure__MaxLag__cpu"] = MaxLag.ToString(),
        ["Backpressure__MaxLag__io"] = MaxLag.ToString(),
        ["Backpressure__RetryAfterSeconds"] = "3",
    });

    public async Task DisposeAsync() => await _host.DisposeAsync();

    private async Task<HttpResponseMessage> SubmitAsync(string type) =>
        await _host.Submit.PostAsync("/events", new StringContent($$$"""{"type":"{{{type}}}","payload":{}}""", Encoding.UTF8, "application/json"));

    /// <summary>Submits one event at a time (no worker runs) until the lane pushes back.</summary>
    private async Task<HttpResponseMessage> FillUntilRefusedAsync(string type) =>
        await Eventually.ReturnsAsync(
            async () =>
            {
                var response = await SubmitAsync(type);
                Assert.Contains(response.StatusCode, new[] { HttpStatusCode.Accepted, HttpStatusCode.TooManyRequests });
                return response;
            },
            r => r.StatusCode == HttpStatusCode.TooManyRequests,
            TimeSpan.FromSeconds(60), $"{type} submissions to get 429", TimeSpan.FromMilliseconds(50));

    [Fact]
    public async Task Lane_over_its_lag_limit_gets_429_until_a_worker_drains_it_and_the_other_lane_is_unaffected()
    {
        using var refused = await FillUntilRefusedAsync("noop.cpu");

        Assert.Equal("3", refused.Headers.GetValues("Retry-After").Single());
        Assert.Equal("application/problem+json", refused.Content.Headers.ContentType?.MediaType);
        var problem = await refused.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal("https://eventpipeline.dev/problems/lane-backpressure", problem.GetProperty("type").GetString());
        Assert.Equal("cpu", problem.GetProperty("lane").GetString());
        Assert.True(problem.GetProperty("lag").GetInt64() > MaxLag);
        var lengthWhenRefused = (await _host.ContentsAsync()).CpuStreamLength;
        Assert.Equal(HttpStatusCode.TooManyRequests, (await SubmitAsync("noop.cpu")).StatusCode);
        Assert.Equal(lengthWhenRefused, (await _host.ContentsAsync()).CpuStreamLength); // a refusal enqueues nothing

        // The I/O lane is not held back by the CPU lane's backlog.
        Assert.Equal(HttpStatusCode.Accepted, (await SubmitAsync("noop.io")).StatusCode);

        await _host.StartCpuWorkerAsync();
        await Eventually.TrueAsync(async () => (await SubmitAsync("noop.cpu")).StatusCode == HttpStatusCode.Accepted,
            TimeSpan.FromSeconds(60), "the CPU lane to accept again once drained", TimeSpan.FromMilliseconds(250));

        // Now the other way round: the I/O lane fills up, the CPU lane (with its worker) keeps accepting.
        using var ioRefused = await FillUntilRefusedAsync("noop.io");
        Assert.Equal("io", (await ioRefused.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("lane").GetString());
        Assert.Equal(HttpStatusCode.Accepted, (await SubmitAsync("noop.cpu")).StatusCode);

        var (_, receiverPort) = await _host.StartReceiverAsync();
        await _host.StartIoWorkerAsync(receiverPort);
        await Eventually.TrueAsync(async () => (await SubmitAsync("noop.io")).StatusCode == HttpStatusCode.Accepted,
            TimeSpan.FromSeconds(60), "the I/O lane to accept again once drained", TimeSpan.FromMilliseconds(250));
    }

    [Fact]
    public async Task Batch_touching_a_lane_over_its_limit_is_refused_whole()
    {
        using var _ = await FillUntilRefusedAsync("noop.cpu");
        var before = await _host.ContentsAsync();

        using var batch = await _host.Submit.PostAsync("/events/batch", new StringContent(
            """{"events":[{"type":"noop.io","payload":{}},{"type":"noop.cpu","payload":{}}]}""", Encoding.UTF8, "application/json"));

        Assert.Equal(HttpStatusCode.TooManyRequests, batch.StatusCode);
        Assert.Equal(before, await _host.ContentsAsync());
    }
}
