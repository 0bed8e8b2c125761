using System.Net;
using System.Net.Http.Headers;
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
        // Eight batches announce the largest body and send only its first bytes: each holds its reservation meanwhile.
        using var release = new CancellationTokenSource();
        var held = new List<Task>();
        using var slow = Host.Client(PipelineHost.SubmitKey);
        for (var i = 0; i < HeldBatches; i++)
        {
            held.Add(SendQuietly(slow, new StalledBody(MaxBatchBytes), release.Token));
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
            await release.CancelAsync();
            await Task.WhenAll(held);
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

    private static async Task SendQuietly(HttpClient client, HttpContent body, CancellationToken cancellationToken)
    {
        try
        {
            using var _ = await client.PostAsync("/events/batch", body, cancellationToken);
        }
        catch (Exception ex) when (ex is OperationCanceledException or HttpRequestException)
        {
            // Cancelled on purpose once the test is done with it.
        }
    }

    /// <summary>
    /// Announces <paramref name="length"/> bytes, sends the start of a batch and then nothing until cancelled. Enough is
    /// sent up front that Kestrel's minimum data rate (240 bytes/s after 5 s) does not end the request first.
    /// </summary>
    private sealed class StalledBody(long length) : HttpContent
    {
        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context, CancellationToken cancellationToken)
        {
            var start = Encoding.UTF8.GetBytes("{\"events\":[" + new string(' ', 16 * 1024));
            await stream.WriteAsync(start, cancellationToken);
            await stream.FlushAsync(cancellationToken);
            await new TaskCompletionSource().Task.WaitAsync(cancellationToken);
        }

        protected override Task SerializeToStreamAsync(Stream stream, TransportContext? context) =>
            SerializeToStreamAsync(stream, context, CancellationToken.None);

        protected override bool TryComputeLength(out long computed)
        {
            computed = length;
            return true;
        }
    }
}
