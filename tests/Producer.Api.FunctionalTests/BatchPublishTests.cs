using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using EventPipeline.Testing;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// An I/O-lane batch larger than <c>Ingest:IoPublishChunk</c> (100) is published in chunks, each confirmed before the
/// next; the client still gets one 202 only after every chunk is held, and every event is in the queue exactly once.
/// </summary>
[Collection(ApiOnlyCollection.Name)]
public sealed class BatchPublishTests(ApiOnlyFixture fixture)
{
    private PipelineHost Host => fixture.Host;

    [Fact]
    public async Task Io_batch_of_several_publish_chunks_is_held_whole_after_the_202()
    {
        const int count = 250;
        var tag = Guid.NewGuid().ToString("N")[..8];
        var ids = Enumerable.Range(0, count).Select(i => $"chunked-{tag}-{i}").ToList();
        var body = JsonSerializer.Serialize(new { events = ids.Select(id => new { id, type = "noop.io", payload = new { } }) });
        var before = await Host.ContentsAsync();

        using var response = await Host.Submit.PostAsync("/events/batch", new StringContent(body, Encoding.UTF8, "application/json"));

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var answered = (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("events").EnumerateArray()
            .Select(e => e.GetProperty("id").GetString()!).ToList();
        Assert.Equal(ids, answered);
        // RabbitMQ's passive declare can trail a confirmed publish by a moment: wait for the count, then make sure it stays.
        await Eventually.TrueAsync(async () => (await Host.ContentsAsync()).IoQueueMessages - before.IoQueueMessages >= count,
            TimeSpan.FromSeconds(10), $"{count} more messages in events-io");
        Assert.Equal(count, (await Host.ContentsAsync()).IoQueueMessages - before.IoQueueMessages);
        foreach (var id in new[] { ids[0], ids[99], ids[100], ids[^1] })
        {
            var status = await Host.Submit.GetFromJsonAsync<JsonElement>($"/events/{id}");
            Assert.Equal("accepted", status.GetProperty("state").GetString());
        }
    }
}
