using System.Net;
using System.Net.Sockets;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using EventPipeline.Testing;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// The API holds at most <c>Backpressure:MaxInFlightBytes</c> (default 32 MiB) of submitted body bytes in memory at
/// once, counted as they arrive: past it a submission gets 429 with Retry-After and nothing of it is enqueued, never a
/// 5xx, and submissions go through again as soon as the held ones finish. A body announced but not yet sent holds
/// nothing, so slow clients cannot lock the others out.
/// </summary>
[Collection(ApiOnlyCollection.Name)]
public sealed class InFlightIngestBudgetTests(ApiOnlyFixture fixture)
{
    private const int MaxBatchBytes = 4 * 1024 * 1024; // Ingest:MaxBatchBytes
    private const int HeldBatches = 8; // × MaxBatchBytes = the default budget
    private PipelineHost Host => fixture.Host;

    [Fact]
    public async Task Slow_clients_announcing_large_bodies_do_not_lock_others_out_of_ingest()
    {
        // Sixteen authenticated batches announce the largest body (64 MiB in all, twice the budget) and send only its
        // first 16 KiB: the start of a trickle that keeps them above Kestrel's minimum data rate (240 B/s) for over a
        // minute. They hold in memory what they sent, not what they announced: everyone else's submissions go through.
        var slow = new List<TcpClient>();
        try
        {
            for (var i = 0; i < 2 * HeldBatches; i++)
            {
                slow.Add(await OpenBatchAsync(16 * 1024));
            }

            for (var i = 0; i < 5; i++)
            {
                using var response = await SubmitAsync();
                Assert.True(response.StatusCode == HttpStatusCode.Accepted,
                    $"submission {i} with {slow.Count} slow batches open got {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
            }

            // The slow batches are still being read (nothing was answered to them): they were not simply dropped.
            Assert.All(slow, c => Assert.Equal(0, c.Available));
        }
        finally
        {
            slow.ForEach(c => c.Dispose());
        }
    }

    [Fact]
    public async Task Submissions_past_the_in_flight_byte_budget_get_429_and_nothing_is_enqueued()
    {
        // Batches that send all but the last byte of the largest body are held in memory whole (4 MiB each) while they
        // wait for it; eight fill the default budget. They are opened one at a time until a submission is refused (a
        // batch that itself finds the budget full is refused and held no more, so a few spare ones are allowed).
        var held = new List<TcpClient>();
        try
        {
            using var refused = await Eventually.ReturnsAsync(
                async () =>
                {
                    if (held.Count < HeldBatches + 4)
                    {
                        held.Add(await OpenBatchAsync(MaxBatchBytes - 1));
                    }

                    var response = await SubmitAsync();
                    Assert.Contains(response.StatusCode, new[] { HttpStatusCode.Accepted, HttpStatusCode.TooManyRequests });
                    return response;
                },
                r => r.StatusCode == HttpStatusCode.TooManyRequests,
                TimeSpan.FromSeconds(30), "a submission to get 429 while eight largest batches are held in memory", TimeSpan.FromMilliseconds(50));

            Assert.Equal("2", refused.Headers.GetValues("Retry-After").Single());
            Assert.Equal("application/problem+json", refused.Content.Headers.ContentType?.MediaType);
            var problem = await refused.Content.ReadFromJsonAsync<JsonElement>();
            Assert.Equal("https://eventpipeline.dev/problems/ingest-in-flight", problem.GetProperty("type").GetString());
            // Refused because the bytes really held left no room for its small body.
            Assert.True(problem.GetProperty("inFlightBytes").GetInt64() > problem.GetProperty("limit").GetInt64() - 16 * 1024,
                $"refused with only {problem.GetProperty("inFlightBytes").GetInt64()} bytes held");

            var before = await Host.ContentsAsync();
            using var again = await SubmitAsync();
            Assert.Equal(HttpStatusCode.TooManyRequests, again.StatusCode);
            Assert.Equal(before, await Host.ContentsAsync()); // a refusal enqueues nothing
        }
        finally
        {
            // The held batches' connections close: their buffers are given back.
            held.ForEach(c => c.Dispose());
        }

        await Eventually.TrueAsync(async () =>
            {
                using var response = await SubmitAsync();
                return response.StatusCode == HttpStatusCode.Accepted;
            },
            TimeSpan.FromSeconds(30), "submissions to be accepted again once the held batches ended", TimeSpan.FromMilliseconds(100));
    }

    /// <summary>
    /// A raw-socket <c>POST /events/batch</c> (nothing buffers it) announcing the largest body and sending its first
    /// <paramref name="sent"/> bytes. A batch the API refuses meanwhile may stop being read: the write then gives up.
    /// </summary>
    private async Task<TcpClient> OpenBatchAsync(int sent)
    {
        var client = new TcpClient();
        await client.ConnectAsync(IPAddress.Loopback, Host.ApiPort);
        var head = Encoding.ASCII.GetBytes(
            $"POST /events/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Api-Key: {PipelineHost.SubmitKey}\r\n" +
            $"Content-Type: application/json\r\nContent-Length: {MaxBatchBytes}\r\n\r\n{{\"events\":[");
        var body = new byte[head.Length + sent - 11];
        head.CopyTo(body, 0);
        body.AsSpan(head.Length).Fill((byte)' ');
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        try
        {
            await client.GetStream().WriteAsync(body, timeout.Token);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException)
        {
            // Refused (429) and closed by the API: this one holds nothing.
        }

        return client;
    }

    private Task<HttpResponseMessage> SubmitAsync() =>
        Host.Submit.PostAsync("/events", new StringContent("""{"type":"noop.cpu","payload":{}}""", Encoding.UTF8, "application/json"));
}
