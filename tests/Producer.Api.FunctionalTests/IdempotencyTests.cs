using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using StackExchange.Redis;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>A repeated submission (same Idempotency-Key or same client id) enqueues exactly once, also when concurrent.</summary>
[Collection(ApiOnlyCollection.Name)]
public sealed class IdempotencyTests(ApiOnlyFixture fixture)
{
    private PipelineHost Host => fixture.Host;

    private static HttpRequestMessage Post(string path, string body, string? key = null)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        if (key is not null)
        {
            request.Headers.Add("Idempotency-Key", key);
        }

        return request;
    }

    private static long Enqueued(BrokerContents before, BrokerContents after, string lane) =>
        lane == "cpu" ? after.CpuStreamLength - before.CpuStreamLength : after.IoQueueMessages - before.IoQueueMessages;

    [Theory]
    [InlineData("cpu", "noop.cpu")]
    [InlineData("io", "noop.io")]
    public async Task Sequential_repeats_of_an_idempotency_key_enqueue_once_and_return_the_original(string lane, string type)
    {
        var key = "seq-" + Guid.NewGuid().ToString("N");
        var body = $$$"""{"type":"{{{type}}}","payload":{"n":1}}""";
        var before = await Host.ContentsAsync();

        using var first = await Host.Submit.SendAsync(Post("/events", body, key));
        Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        var original = await first.Content.ReadFromJsonAsync<JsonElement>();
        var id = original.GetProperty("id").GetString()!;

        for (var i = 0; i < 4; i++)
        {
            using var repeat = await Host.Submit.SendAsync(Post("/events", body, key));
            Assert.Equal(HttpStatusCode.OK, repeat.StatusCode);
            Assert.Equal("true", repeat.Headers.GetValues("Idempotent-Replayed").Single());
            Assert.Equal($"/events/{id}", repeat.Headers.Location?.OriginalString);
            var answer = await repeat.Content.ReadFromJsonAsync<JsonElement>();
            Assert.Equal(id, answer.GetProperty("id").GetString());
            Assert.Equal(lane, answer.GetProperty("lane").GetString());
            Assert.Equal("accepted", answer.GetProperty("state").GetString());
            Assert.True(answer.GetProperty("duplicate").GetBoolean());
        }

        await AssertEnqueuedAsync(before, lane, 1);
    }

    [Theory]
    [InlineData("cpu", "noop.cpu")]
    [InlineData("io", "noop.io")]
    public async Task Concurrent_requests_with_one_idempotency_key_enqueue_once(string lane, string type)
    {
        var key = "conc-" + Guid.NewGuid().ToString("N");
        var body = $$$"""{"type":"{{{type}}}","payload":{"n":2}}""";
        var before = await Host.ContentsAsync();

        var answers = await Task.WhenAll(Enumerable.Range(0, 24).Select(async _ =>
        {
            using var response = await Host.Submit.SendAsync(Post("/events", body, key));
            var json = await response.Content.ReadFromJsonAsync<JsonElement>();
            return (response.StatusCode, Id: json.TryGetProperty("id", out var id) ? id.GetString() : null);
        }));

        // Every answer is 202 (the winner), 200 (a repeat) or 409 (asked while the winner was still publishing).
        Assert.All(answers, a => Assert.Contains(a.StatusCode, new[] { HttpStatusCode.Accepted, HttpStatusCode.OK, HttpStatusCode.Conflict }));
        Assert.Single(answers, a => a.StatusCode == HttpStatusCode.Accepted);
        Assert.Single(answers.Where(a => a.Id is not null).Select(a => a.Id).Distinct());
        await AssertEnqueuedAsync(before, lane, 1);
    }

    [Theory]
    [InlineData("cpu", "noop.cpu")]
    [InlineData("io", "noop.io")]
    public async Task Concurrent_and_sequential_repeats_of_a_client_given_id_enqueue_once(string lane, string type)
    {
        var id = "client-" + Guid.NewGuid().ToString("N");
        var body = $$$"""{"id":"{{{id}}}","type":"{{{type}}}","payload":{}}""";
        var before = await Host.ContentsAsync();

        var statuses = await Task.WhenAll(Enumerable.Range(0, 24).Select(async _ =>
        {
            using var response = await Host.Submit.SendAsync(Post("/events", body));
            return response.StatusCode;
        }));
        using var later = await Host.Submit.SendAsync(Post("/events", body));

        Assert.Single(statuses, s => s == HttpStatusCode.Accepted);
        Assert.All(statuses, s => Assert.Contains(s, new[] { HttpStatusCode.Accepted, HttpStatusCode.OK, HttpStatusCode.Conflict }));
        Assert.Equal(HttpStatusCode.OK, later.StatusCode);
        await AssertEnqueuedAsync(before, lane, 1);
    }

    [Fact]
    public async Task Same_key_with_a_different_body_is_422_and_enqueues_nothing()
    {
        var key = "reuse-" + Guid.NewGuid().ToString("N");
        using var first = await Host.Submit.SendAsync(Post("/events", """{"type":"noop.cpu","payload":{"a":1}}""", key));
        Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        var before = await Host.ContentsAsync();

        using var second = await Host.Submit.SendAsync(Post("/events", """{"type":"noop.cpu","payload":{"a":2}}""", key));

        Assert.Equal(HttpStatusCode.UnprocessableEntity, second.StatusCode);
        var problem = await second.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal("https://eventpipeline.dev/problems/idempotency-key-reused", problem.GetProperty("type").GetString());
        Assert.Equal(before, await Host.ContentsAsync());
    }

    [Fact]
    public async Task Batch_repeat_enqueues_only_the_events_not_seen_before()
    {
        var seen = "batch-seen-" + Guid.NewGuid().ToString("N");
        var fresh = "batch-new-" + Guid.NewGuid().ToString("N");
        using var first = await Host.Submit.SendAsync(Post("/events", $$$"""{"id":"{{{seen}}}","type":"noop.io","payload":{}}"""));
        Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        var before = await Host.ContentsAsync();

        using var batch = await Host.Submit.SendAsync(Post("/events/batch",
            $$$"""{"events":[{"id":"{{{seen}}}","type":"noop.io","payload":{}},{"id":"{{{fresh}}}","type":"noop.io","payload":{}}]}"""));

        Assert.Equal(HttpStatusCode.Accepted, batch.StatusCode);
        var events = (await batch.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("events");
        Assert.Equal(seen, events[0].GetProperty("id").GetString());
        Assert.True(events[0].GetProperty("duplicate").GetBoolean());
        Assert.Equal(fresh, events[1].GetProperty("id").GetString());
        Assert.False(events[1].TryGetProperty("duplicate", out _));
        await AssertEnqueuedAsync(before, "io", 1);
    }

    [Fact]
    public async Task Cpu_lane_submission_guarded_by_id_or_key_costs_one_redis_round_trip()
    {
        // The idempotency check and the publish are one script: a single POST waits for Redis once, not two or three
        // times (a key's binding, the ids' reservation, the publish were each a round trip).
        var clientId = "trip-" + Guid.NewGuid().ToString("N");
        using var redis = await Host.Redis.ConnectAsync();
        await using var log = await EventPipeline.Testing.RedisMonitor.StartAsync(Host.Redis);

        using var byId = await Host.Submit.SendAsync(Post("/events", $$$"""{"id":"{{{clientId}}}","type":"noop.cpu","payload":{}}"""));
        using var byKey = await Host.Submit.SendAsync(Post("/events", """{"type":"noop.cpu","payload":{"trip":1}}""", "trip-" + Guid.NewGuid().ToString("N")));

        Assert.Equal(HttpStatusCode.Accepted, byId.StatusCode);
        Assert.Equal(HttpStatusCode.Accepted, byKey.StatusCode);
        var keyedId = (await byKey.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("id").GetString()!;
        var sentForId = await log.SentNamingAsync(clientId, redis.GetDatabase());
        Assert.True(sentForId.Count == 1, $"a POST with a client-given id sent {sentForId.Count} commands naming it:\n{string.Join("\n", sentForId)}");
        var sentForKey = await log.SentNamingAsync(keyedId, redis.GetDatabase());
        Assert.True(sentForKey.Count == 1, $"a POST with an Idempotency-Key sent {sentForKey.Count} commands naming its event:\n{string.Join("\n", sentForKey)}");
        Assert.Equal("accepted", (string?)await redis.GetDatabase().HashGetAsync($"event:{clientId}", "state"));
        Assert.Equal("accepted", (string?)await redis.GetDatabase().HashGetAsync($"event:{keyedId}", "state"));
    }

    private async Task AssertEnqueuedAsync(BrokerContents before, string lane, long expected)
    {
        // RabbitMQ's passive declare can trail a confirmed publish by a moment: wait for the count, then make sure it stays.
        await EventPipeline.Testing.Eventually.TrueAsync(async () => Enqueued(before, await Host.ContentsAsync(), lane) >= expected,
            TimeSpan.FromSeconds(10), $"{expected} event(s) in the {lane} lane");
        Assert.Equal(expected, Enqueued(before, await Host.ContentsAsync(), lane));
    }
}
