using System.Net;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using EventPipeline.Testing;

namespace EventPipeline.EndToEnd.Tests;

[Collection(AppHostCollection.Name)]
public sealed class PipelineFlowTests(AppHostFixture fixture)
{
    private static readonly TimeSpan ProcessingDeadline = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Pbkdf2_event_goes_through_redis_and_succeeds_with_the_correct_hash()
    {
        var response = await fixture.Api.PostAsJsonAsync("/events", new { type = "hash.pbkdf2", payload = new { data = "correct horse", iterations = 10_000 } });

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var accepted = await response.Content.ReadFromJsonAsync<JsonElement>();
        var id = accepted.GetProperty("id").GetString()!;
        Assert.Equal("cpu", accepted.GetProperty("lane").GetString());
        Assert.Equal("accepted", accepted.GetProperty("state").GetString());
        Assert.Equal($"/events/{id}", response.Headers.Location?.OriginalString);

        var status = await WaitForStateAsync(id, "succeeded");
        var expected = Convert.ToHexStringLower(Rfc2898DeriveBytes.Pbkdf2(
            Encoding.UTF8.GetBytes("correct horse"), Encoding.UTF8.GetBytes(id), 10_000, HashAlgorithmName.SHA256, 32));
        Assert.Equal(expected, status.GetProperty("result").GetString());
        Assert.Equal(1, status.GetProperty("attempts").GetInt32());
        Assert.True(status.GetProperty("finishedAt").GetDateTimeOffset() >= status.GetProperty("acceptedAt").GetDateTimeOffset());
    }

    [Fact]
    public async Task Webhook_event_goes_through_rabbitmq_and_reaches_the_downstream_receiver()
    {
        var marker = Guid.NewGuid().ToString("N");
        var response = await fixture.Api.PostAsJsonAsync("/events", new { type = "webhook.post", payload = new { order = marker, total = 42 } });

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var accepted = await response.Content.ReadFromJsonAsync<JsonElement>();
        var id = accepted.GetProperty("id").GetString()!;
        Assert.Equal("io", accepted.GetProperty("lane").GetString());

        await WaitForStateAsync(id, "succeeded");
        var received = await fixture.Downstream.GetFromJsonAsync<JsonElement>($"/received/{id}");
        Assert.Equal(1, received.GetProperty("count").GetInt32());
    }

    [Fact]
    public async Task Batch_across_both_lanes_is_accepted_and_every_event_succeeds()
    {
        var events = Enumerable.Range(0, 20).Select(i => i % 2 == 0
            ? (object)new { type = "hash.pbkdf2", payload = new { data = $"item {i}", iterations = 1000 } }
            : new { type = "webhook.post", payload = new { item = i } }).ToArray();

        var response = await fixture.Api.PostAsJsonAsync("/events/batch", new { events });

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>();
        var ids = body.GetProperty("events").EnumerateArray().Select(e => e.GetProperty("id").GetString()!).ToList();
        Assert.Equal(20, ids.Distinct().Count());
        foreach (var id in ids)
        {
            await WaitForStateAsync(id, "succeeded");
        }
    }

    [Fact]
    public async Task Client_given_id_is_kept_and_status_is_found_under_it()
    {
        var id = "order-" + Guid.NewGuid().ToString("N");
        var response = await fixture.Api.PostAsJsonAsync("/events", new { id, type = "noop.cpu", payload = new { } });

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        Assert.Equal($"/events/{id}", response.Headers.Location?.OriginalString);
        await WaitForStateAsync(id, "succeeded");
    }

    [Fact]
    public async Task Unknown_event_id_is_404_problem_details()
    {
        var response = await fixture.Api.GetAsync($"/events/never-{Guid.NewGuid():N}");

        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
    }

    private async Task<JsonElement> WaitForStateAsync(string id, string state) =>
        await Eventually.ReturnsAsync(
            () => fixture.Api.GetFromJsonAsync<JsonElement>($"/events/{id}"),
            s => s.GetProperty("state").GetString() == state,
            ProcessingDeadline,
            $"event {id} to be {state}");
}
