using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using EventPipeline.Testing;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>Brokers, API, both workers (two attempts each, short retry delays) and the downstream receiver.</summary>
public sealed class FullPipelineFixture : IAsyncLifetime
{
    public PipelineHost Host { get; private set; } = null!;

    public int ReceiverPort { get; private set; }

    public HttpClient Receiver { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Host = await PipelineHost.StartAsync();
        (_, ReceiverPort) = await Host.StartReceiverAsync();
        Receiver = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ReceiverPort}") };
        await Host.StartCpuWorkerAsync(new Dictionary<string, string?>
        {
            ["CpuLane__MaxAttempts"] = "2",
            ["CpuLane__RetryBaseDelay"] = "00:00:00.100",
            ["CpuLane__RetryMaxDelay"] = "00:00:00.200",
        });
        await Host.StartIoWorkerAsync(ReceiverPort, new Dictionary<string, string?>
        {
            ["IoLane__MaxAttempts"] = "2",
            ["IoLane__RetryMinInterval"] = "00:00:00.100",
            ["IoLane__RetryMaxInterval"] = "00:00:00.200",
            ["IoLane__RetryIntervalDelta"] = "00:00:00.050",
        });
    }

    public async Task DisposeAsync()
    {
        Receiver?.Dispose();
        await Host.DisposeAsync();
    }
}

/// <summary>
/// Dead letters of both lanes through the API: an event that fails every attempt is listed, inspected (event, error,
/// history), replayed (and then succeeds, because its failure cause is gone), deleted, and replayed in bulk.
/// </summary>
public sealed class DeadLetterTests(FullPipelineFixture fixture) : IClassFixture<FullPipelineFixture>
{
    private PipelineHost Host => fixture.Host;

    private async Task<string> SubmitAsync(string body)
    {
        using var response = await Host.Submit.PostAsync("/events", new StringContent(body, Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        return (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("id").GetString()!;
    }

    private async Task<JsonElement> WaitForDeadLetterAsync(string lane, string id)
    {
        try
        {
            return await PollDeadLetterAsync(lane, id);
        }
        catch (TimeoutException ex)
        {
            // Say why: what the lane holds, and what the services complained about.
            var complaints = Host.Services.Select(s => $"{s.Name}: " + string.Join("\n", s.Output.Where(l => l.Contains("Exception", StringComparison.Ordinal)).Take(10)));
            throw new TimeoutException($"{ex.Message}\nlist: {await Host.Admin.GetStringAsync($"/dead-letters/{lane}")}\nlanes: {await Host.Submit.GetStringAsync("/lanes")}\n{string.Join("\n", complaints)}", ex);
        }
    }

    private async Task<JsonElement> PollDeadLetterAsync(string lane, string id) =>
        await Eventually.ReturnsAsync(
            async () =>
            {
                using var response = await Host.Admin.GetAsync($"/dead-letters/{lane}/{id}");
                return response.StatusCode == HttpStatusCode.OK ? await response.Content.ReadFromJsonAsync<JsonElement>() : default;
            },
            d => d.ValueKind == JsonValueKind.Object,
            TimeSpan.FromSeconds(90),
            $"dead letter {id} in the {lane} lane",
            TimeSpan.FromMilliseconds(250));

    private async Task<List<string>> ListIdsAsync(string lane)
    {
        var ids = new List<string>();
        string? after = null;
        do
        {
            var page = await Host.Admin.GetFromJsonAsync<JsonElement>($"/dead-letters/{lane}?limit=2" + (after is null ? "" : $"&after={Uri.EscapeDataString(after)}"));
            ids.AddRange(page.GetProperty("items").EnumerateArray().Select(i => i.GetProperty("id").GetString()!));
            after = page.GetProperty("next").ValueKind == JsonValueKind.String ? page.GetProperty("next").GetString() : null;
        }
        while (after is not null);

        return ids;
    }

    [Fact]
    public async Task Cpu_dead_letter_is_listed_inspected_and_succeeds_when_replayed()
    {
        // Fails its two attempts, then succeeds on the third run: the cause is "fixed" by the time it is replayed.
        var id = await SubmitAsync("""{"type":"test.fail","payload":{"lane":"cpu","failTimes":2}}""");
        await Host.WaitForStateAsync(id, "dead");

        var dead = await WaitForDeadLetterAsync("cpu", id);
        Assert.Equal("test.fail", dead.GetProperty("type").GetString());
        Assert.Equal(2, dead.GetProperty("payload").GetProperty("failTimes").GetInt32());
        Assert.Equal(2, dead.GetProperty("attempts").GetInt32());
        Assert.Equal("failed", dead.GetProperty("reason").GetString());
        Assert.Contains("RequestedTestFailureException", dead.GetProperty("error").GetProperty("type").GetString());
        Assert.False(string.IsNullOrEmpty(dead.GetProperty("error").GetProperty("stackTrace").GetString()));
        Assert.Equal(2, dead.GetProperty("errors").GetArrayLength());
        Assert.Contains(id, await ListIdsAsync("cpu"));

        using var replay = await Host.Admin.PostAsync($"/dead-letters/cpu/{id}/replay", null);
        Assert.Equal(HttpStatusCode.Accepted, replay.StatusCode);
        Assert.Equal($"/events/{id}", replay.Headers.Location?.OriginalString);

        var status = await Host.WaitForStateAsync(id, "succeeded");
        Assert.Equal(1, status.GetProperty("attempts").GetInt32()); // attempts start afresh
        Assert.Equal(1, status.GetProperty("replays").GetInt32());
        Assert.Equal(HttpStatusCode.NotFound, (await Host.Admin.GetAsync($"/dead-letters/cpu/{id}")).StatusCode);
    }

    [Fact]
    public async Task Io_dead_letter_is_listed_inspected_and_delivered_when_replayed()
    {
        // The receiver answers 503 to the first two deliveries of this event: both attempts fail, the replay succeeds.
        var id = await SubmitAsync("""{"type":"webhook.post","payload":{"order":7,"simulate":{"failTimes":2}}}""");
        await Host.WaitForStateAsync(id, "dead");

        var dead = await WaitForDeadLetterAsync("io", id);
        Assert.Equal("webhook.post", dead.GetProperty("type").GetString());
        Assert.Equal(7, dead.GetProperty("payload").GetProperty("order").GetInt32());
        Assert.Equal("failed", dead.GetProperty("reason").GetString());
        Assert.Contains("TransientDownstreamException", dead.GetProperty("error").GetProperty("type").GetString());
        Assert.Contains("503", dead.GetProperty("error").GetProperty("message").GetString());
        Assert.Contains(id, await ListIdsAsync("io"));

        using var replay = await Host.Admin.PostAsync($"/dead-letters/io/{id}/replay", null);
        Assert.Equal(HttpStatusCode.Accepted, replay.StatusCode);

        var status = await Host.WaitForStateAsync(id, "succeeded");
        Assert.Equal(1, status.GetProperty("attempts").GetInt32());
        Assert.Equal(1, status.GetProperty("replays").GetInt32());
        var received = await fixture.Receiver.GetFromJsonAsync<JsonElement>($"/received/{id}");
        Assert.Equal(1, received.GetProperty("count").GetInt32());
        Assert.Equal(HttpStatusCode.NotFound, (await Host.Admin.GetAsync($"/dead-letters/io/{id}")).StatusCode);
    }

    [Theory]
    [InlineData("cpu")]
    [InlineData("io")]
    public async Task Deleted_dead_letter_is_gone_and_replay_all_keeps_the_error_history(string lane)
    {
        var doomed = await SubmitAsync($$$"""{"type":"test.fail","payload":{"lane":"{{{lane}}}"}}""");
        var kept = await SubmitAsync($$$"""{"type":"test.fail","payload":{"lane":"{{{lane}}}"}}""");
        await WaitForDeadLetterAsync(lane, doomed);
        var first = await WaitForDeadLetterAsync(lane, kept);

        using (var delete = await Host.Admin.DeleteAsync($"/dead-letters/{lane}/{doomed}"))
        {
            Assert.Equal(HttpStatusCode.NoContent, delete.StatusCode);
        }

        Assert.Equal(HttpStatusCode.NotFound, (await Host.Admin.GetAsync($"/dead-letters/{lane}/{doomed}")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await Host.Admin.DeleteAsync($"/dead-letters/{lane}/{doomed}")).StatusCode);

        using var replayAll = await Host.Admin.PostAsync($"/dead-letters/{lane}/replay", null);
        Assert.Equal(HttpStatusCode.OK, replayAll.StatusCode);
        var report = await replayAll.Content.ReadFromJsonAsync<JsonElement>();
        Assert.True(report.GetProperty("replayed").GetInt32() >= 1, report.ToString());

        // test.fail always fails: it dies again, now carrying the failures from before the replay as well.
        var again = await Eventually.ReturnsAsync(
            () => Host.Admin.GetFromJsonAsync<JsonElement>($"/dead-letters/{lane}/{kept}"),
            d => d.GetProperty("errors").GetArrayLength() > first.GetProperty("errors").GetArrayLength(),
            TimeSpan.FromSeconds(90), $"{kept} to die again after the replay", TimeSpan.FromMilliseconds(250));
        Assert.Equal(first.GetProperty("errors")[0].GetProperty("message").GetString(), again.GetProperty("errors")[0].GetProperty("message").GetString());
        Assert.Equal(1, (await Host.Submit.GetFromJsonAsync<JsonElement>($"/events/{kept}")).GetProperty("replays").GetInt32());
        Assert.DoesNotContain(doomed, await ListIdsAsync(lane));
    }

    [Fact]
    public async Task Unknown_lane_and_bad_paging_are_problems()
    {
        var unknown = await Host.Admin.GetAsync("/dead-letters/gpu");
        Assert.Equal(HttpStatusCode.NotFound, unknown.StatusCode);
        Assert.Equal("https://eventpipeline.dev/problems/unknown-lane", (await unknown.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("type").GetString());
        Assert.Equal(HttpStatusCode.BadRequest, (await Host.Admin.GetAsync("/dead-letters/cpu?limit=0")).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await Host.Admin.GetAsync("/dead-letters/io?limit=abc")).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await Host.Admin.PostAsync("/dead-letters/cpu/replay?max=100000", null)).StatusCode);
    }
}
