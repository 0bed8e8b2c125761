using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using EventPipeline.Testing;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// I/O-lane ingest comes back by itself once <c>events-io</c> takes publishes again. RabbitMQ 3.10's quorum queue with
/// <c>x-overflow: reject-publish</c> leaves a channel that got a refusal refusing every later publish until the queue
/// sends it a "go" — which never comes when a <c>max-length</c> policy is simply cleared, and which a new leader after
/// a node's death does not always send (issue 15). A publisher that keeps such a channel answers 503 for ever; a fresh
/// channel publishes at once.
/// </summary>
[Collection(ApiOnlyCollection.Name)]
public sealed class IoPublishRecoveryTests(ApiOnlyFixture fixture)
{
    private const string Policy = "io-publish-recovery-cap";

    private PipelineHost Host => fixture.Host;

    private Task<HttpResponseMessage> SubmitAsync(string body) =>
        Host.Submit.PostAsync("/events/batch", new StringContent(body, Encoding.UTF8, "application/json"));

    private static string Batch(int count) =>
        JsonSerializer.Serialize(new { events = Enumerable.Range(0, count).Select(i => new { type = "noop.io", payload = new { i } }) });

    [Fact]
    public async Task Io_ingest_answers_202_again_once_a_queue_that_refused_publishes_takes_them_again()
    {
        // The API declares events-io on its first publish.
        using (var first = await SubmitAsync(Batch(1)))
        {
            Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        }

        // Concurrent requests leave the publisher several open channels, each of which has published to the queue: the
        // quorum queue's refusal reaches every one of them, not only the channel whose publish it nacked.
        var warm = await Task.WhenAll(Enumerable.Range(0, 16).Select(async _ =>
        {
            using var response = await SubmitAsync(Batch(200));
            return response.StatusCode;
        }));
        Assert.All(warm, status => Assert.Equal(HttpStatusCode.Accepted, status));

        var before = await Host.Rabbit.MessageCountAsync("events-io") ?? 0;
        try
        {
            await Host.Rabbit.CtlAsync("set_policy", Policy, "^events-io$", $$"""{"max-length":{{before + 20}}}""", "--apply-to", "queues");
            // A quorum queue applies its cap a little late: submit until one is refused.
            var refused = await Eventually.ReturnsAsync(async () =>
            {
                using var response = await SubmitAsync(Batch(50));
                return (response.StatusCode, Problem: await response.Content.ReadAsStringAsync());
            }, r => r.StatusCode == HttpStatusCode.ServiceUnavailable, TimeSpan.FromSeconds(60), "a submission to be refused by the full queue",
                TimeSpan.FromMilliseconds(200));
            // The refusal still says exactly what may be held.
            var problem = JsonDocument.Parse(refused.Problem).RootElement;
            Assert.True(problem.TryGetProperty("uncertainIds", out var uncertain) && uncertain.GetArrayLength() > 0, refused.Problem);

            // Lifted the way an operator lifts it: the policy is cleared (no purge, no consumer, so the queue never
            // re-checks its limit and never tells a refused channel to go on).
            await Host.Rabbit.CtlAsync("clear_policy", Policy);
            await Eventually.TrueAsync(async () => !(await Host.Rabbit.CtlAsync("list_queues", "name", "policy")).Contains(Policy),
                TimeSpan.FromSeconds(30), "the cap to be gone from events-io", TimeSpan.FromMilliseconds(500));

            var attempts = 0;
            var lastAnswer = "";
            try
            {
                await Eventually.TrueAsync(async () =>
                {
                    attempts++;
                    using var response = await SubmitAsync(Batch(1));
                    lastAnswer = $"{(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}";
                    return response.StatusCode == HttpStatusCode.Accepted;
                }, TimeSpan.FromSeconds(45), "I/O ingest to answer 202 again", TimeSpan.FromMilliseconds(500));
            }
            catch (TimeoutException ex)
            {
                throw new TimeoutException($"{ex.Message}: still refused after {attempts} submissions; last answer: {lastAnswer}", ex);
            }

            // No refused channel is tried again: the first submission after the cap is gone gets a channel that was
            // opened after the refusal (a retry or two for the cap to leave the queue's own state is allowed).
            Assert.True(attempts <= 2, $"{attempts - 1} submissions were refused after the cap was gone (refused channels reused)");
        }
        finally
        {
            if ((await Host.Rabbit.CtlAsync("list_policies")).Contains(Policy))
            {
                await Host.Rabbit.CtlAsync("clear_policy", Policy);
            }

            // Leave the shared queue as the collection's other tests expect it: counted from what they submit.
            await Host.Rabbit.CtlAsync("purge_queue", "events-io");
        }
    }
}
