using System.Net;
using System.Net.Sockets;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using EventPipeline.Testing;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// The API holds at most <c>Backpressure:MaxInFlightBytes</c> (default 32 MiB) of submissions at once: past it a
/// submission gets 429 with Retry-After before anything of it is read or enqueued, never a 5xx, and submissions go
/// through again as soon as the held ones finish.
/// </summary>
[Collection(ApiOnlyCollection.Name)]
public sealed class InFlightIngestBudgetTests(ApiOnlyFixture fixture)
{
    private const int MaxBatchBytes = 4 * 1024 * 1024; // Ingest:MaxBatchBytes
    private const int HeldBatches = 8; // × MaxBatchBytes = the default budget
    private PipelineHost Host => fixture.Host;

    [Fact]
    public async Task Submissions_past_the_in_flight_byte_budget_get_429_and_nothing_is_enqueued()
    {
        // Eight batches announce the largest body and send only its first bytes (raw sockets: nothing buffers them):
        // each holds its reservation meanwhile. Enough is sent that Kestrel's minimum data rate does not end them first.
        var held = new List<TcpClient>();
        for (var i = 0; i < HeldBatches; i++)
        {
            var client = new TcpClient();
            held.Add(client);
            await client.ConnectAsync(IPAddress.Loopback, Host.ApiPort);
            var start = Encoding.ASCII.GetBytes(
                $"POST /events/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Api-Key: {PipelineHost.SubmitKey}\r\n" +
                $"Content-Type: application/json\r\nContent-Length: {MaxBatchBytes}\r\n\r\n{{\"events\":[" + new string(' ', 16 * 1024));
            await client.GetStream().WriteAsync(start);
        }

        try
        {
            using var refused = await Eventually.ReturnsAsync(
                async () =>
                {
                    var response = await SubmitAsync();
                    Assert.Contains(response.StatusCode, new[] { HttpStatusCode.Accepted, HttpStatusCode.TooManyRequests });
                    return response;
                },
                r => r.StatusCode == HttpStatusCode.TooManyRequests,
                TimeSpan.FromSeconds(30), "a submission to get 429 while eight largest batches are in flight", TimeSpan.FromMilliseconds(50));

            Assert.Equal("2", refused.Headers.GetValues("Retry-After").Single());
            Assert.Equal("application/problem+json", refused.Content.Headers.ContentType?.MediaType);
            var problem = await refused.Content.ReadFromJsonAsync<JsonElement>();
            Assert.Equal("https://eventpipeline.dev/problems/ingest-in-flight", problem.GetProperty("type").GetString());
            Assert.True(problem.GetProperty("inFlightBytes").GetInt64() >= (long)HeldBatches * MaxBatchBytes);

            var before = await Host.ContentsAsync();
            using var again = await SubmitAsync();
            Assert.Equal(HttpStatusCode.TooManyRequests, again.StatusCode);
            Assert.Equal(before, await Host.ContentsAsync()); // a refusal enqueues nothing
        }
        finally
        {
            // The held batches' connections close: their reservations are given back.
            held.ForEach(c => c.Dispose());
        }

        await Eventually.TrueAsync(async () =>
            {
                using var response = await SubmitAsync();
                return response.StatusCode == HttpStatusCode.Accepted;
            },
            TimeSpan.FromSeconds(30), "submissions to be accepted again once the held batches ended", TimeSpan.FromMilliseconds(100));
    }

    private Task<HttpResponseMessage> SubmitAsync() =>
        Host.Submit.PostAsync("/events", new StringContent("""{"type":"noop.cpu","payload":{}}""", Encoding.UTF8, "application/json"));
}
