using Aspire.Hosting.Testing;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace EventPipeline.EndToEnd.Tests;

[Collection(AppHostCollection.Name)]
public sealed class BadInputTests(AppHostFixture fixture)
{
    [Theory]
    [InlineData("{\"type\":\"hash.pbkdf2\",\"payload\":{\"data\":\"x\"", "https://eventpipeline.dev/problems/malformed-json", null)]
    [InlineData("{\"type\":\"no.such.type\",\"payload\":{}}", "https://eventpipeline.dev/problems/validation", "type")]
    [InlineData("{\"type\":\"hash.pbkdf2\"}", "https://eventpipeline.dev/problems/validation", "payload")]
    [InlineData("{\"type\":\"hash.pbkdf2\",\"payload\":{\"data\":\"x\"}}", "https://eventpipeline.dev/problems/validation", "payload.iterations")]
    [InlineData("{\"type\":\"hash.pbkdf2\",\"payload\":{\"data\":\"x\",\"iterations\":0}}", "https://eventpipeline.dev/problems/validation", "payload.iterations")]
    [InlineData("[1,2,3]", "https://eventpipeline.dev/problems/validation", "$")]
    public async Task Bad_event_gets_400_problem_details_naming_the_problem(string body, string problemType, string? errorKey)
    {
        var response = await fixture.Api.PostAsync("/events", new StringContent(body, Encoding.UTF8, "application/json"));

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        var problem = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal(problemType, problem.GetProperty("type").GetString());
        if (errorKey is not null)
        {
            Assert.True(problem.GetProperty("errors").TryGetProperty(errorKey, out _), $"errors should name '{errorKey}': {problem}");
        }
    }

    [Fact]
    public async Task Unknown_type_answer_lists_the_known_types()
    {
        var response = await fixture.Api.PostAsJsonAsync("/events", new { type = "digest.sha1", payload = new { } });

        var problem = await response.Content.ReadFromJsonAsync<JsonElement>();
        var message = problem.GetProperty("errors").GetProperty("type")[0].GetString()!;
        Assert.Contains("hash.pbkdf2", message);
        Assert.Contains("webhook.post", message);
    }

    [Fact]
    public async Task Batch_with_one_bad_event_is_rejected_whole_and_enqueues_nothing()
    {
        var goodId = "batch-good-" + Guid.NewGuid().ToString("N");
        var response = await fixture.Api.PostAsJsonAsync("/events/batch", new
        {
            events = new object[]
            {
                new { id = goodId, type = "noop.cpu", payload = new { } },
                new { type = "hash.pbkdf2", payload = new { data = "x", iterations = -1 } },
            },
        });

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        var problem = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.True(problem.GetProperty("errors").TryGetProperty("events[1].payload.iterations", out _), problem.ToString());
        Assert.Equal(HttpStatusCode.NotFound, (await fixture.Api.GetAsync($"/events/{goodId}")).StatusCode);
    }

    [Fact]
    public async Task Wrong_content_type_gets_415_problem_details()
    {
        var response = await fixture.Api.PostAsync("/events", new StringContent("type=hash.pbkdf2", Encoding.UTF8, "application/x-www-form-urlencoded"));

        Assert.Equal(HttpStatusCode.UnsupportedMediaType, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
    }

    [Fact]
    public async Task Request_without_api_key_gets_401()
    {
        using var anonymous = fixture.App.CreateHttpClient("producer-api");
        var response = await anonymous.PostAsJsonAsync("/events", new { type = "noop.cpu", payload = new { } });

        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
    }
}
