using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// What the lane's tests and the bench rely on from Downstream.Receiver, called directly (the shared lane's receiver
/// process, no extra processes): a delivery without an Idempotency-Key or with a body that is not JSON is refused with a
/// 400 ProblemDetails; <c>simulate</c> answers the status the body asks for, or 503 to the first <c>failTimes</c>
/// arrivals; an accepted delivery gets an empty 200; the ledger counts arrivals, acceptances and the path.
/// </summary>
[Collection(SharedIoLaneCollection.Name)]
public sealed class ReceiverContractTests(SharedIoLane lane)
{
    private HttpClient Receiver => lane.Host.ReceiverClient;

    [Fact]
    public async Task Receiver_refuses_what_it_cannot_count_answers_what_the_body_asks_and_counts_every_arrival()
    {
        using (var noKey = await Receiver.PostAsync("/webhook", Json("{}")))
        {
            Assert.Equal(HttpStatusCode.BadRequest, noKey.StatusCode);
            Assert.Equal("application/problem+json", noKey.Content.Headers.ContentType?.MediaType);
            Assert.Contains("Idempotency-Key", await noKey.Content.ReadAsStringAsync());
        }

        var notJson = IoLaneHost.NewId("receiver-notjson");
        using (var response = await Post("/webhook", notJson, "{not json"))
        {
            Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
            Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        }

        var teapot = IoLaneHost.NewId("receiver-status");
        using (var response = await Post("/webhook", teapot, """{"simulate":{"status":418}}"""))
        {
            Assert.Equal((HttpStatusCode)418, response.StatusCode);
        }

        var flaky = IoLaneHost.NewId("receiver-failtimes");
        using (var first = await Post("/webhook/a/b?x=1", flaky, """{"n":1,"simulate":{"failTimes":1,"delayMs":1}}"""))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, first.StatusCode);
        }

        using (var second = await Post("/webhook/a/b?x=1", flaky, """{"n":1,"simulate":{"failTimes":1,"delayMs":1}}"""))
        {
            Assert.Equal(HttpStatusCode.OK, second.StatusCode);
            Assert.Empty(await second.Content.ReadAsByteArrayAsync());
        }

        var teapotSeen = await Receiver.GetFromJsonAsync<JsonElement>($"/received/{teapot}");
        Assert.Equal((0, 1), (teapotSeen.GetProperty("count").GetInt32(), teapotSeen.GetProperty("arrivals").GetInt32()));
        var notJsonSeen = await Receiver.GetFromJsonAsync<JsonElement>($"/received/{notJson}");
        Assert.Equal((0, 1), (notJsonSeen.GetProperty("count").GetInt32(), notJsonSeen.GetProperty("arrivals").GetInt32()));
        var flakySeen = await Receiver.GetFromJsonAsync<JsonElement>($"/received/{flaky}");
        Assert.Equal((1, 2), (flakySeen.GetProperty("count").GetInt32(), flakySeen.GetProperty("arrivals").GetInt32()));
        Assert.Equal("/webhook/a/b?x=1", flakySeen.GetProperty("path").GetString());
    }

    private async Task<HttpResponseMessage> Post(string path, string key, string body)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = Json(body) };
        request.Headers.Add("Idempotency-Key", key);
        return await Receiver.SendAsync(request);
    }

    private static StringContent Json(string body) => new(body, Encoding.UTF8, "application/json");
}
