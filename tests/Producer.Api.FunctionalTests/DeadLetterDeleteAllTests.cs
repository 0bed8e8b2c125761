using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using EventPipeline.Testing;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// <c>DELETE /dead-letters/{lane}?max=</c>: a lane's dead letters go for good, oldest first, never more than the bound,
/// and the answer says how many went and how many remain. Bad bounds are 400s, the submit key is refused.
/// </summary>
public sealed class DeadLetterDeleteAllTests(FullPipelineFixture fixture) : IClassFixture<FullPipelineFixture>
{
    private PipelineHost Host => fixture.Host;

    private async Task<string> SubmitAsync(string body)
    {
        using var response = await Host.Submit.PostAsync("/events", new StringContent(body, Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        return (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("id").GetString()!;
    }

    private async Task WaitForDeadLetterCountAsync(string lane, long count) =>
        await Eventually.ReturnsAsync(
            async () => (await Host.Admin.GetFromJsonAsync<JsonElement>($"/dead-letters/{lane}?limit=1")).GetProperty("total").GetInt64(),
            total => total == count,
            TimeSpan.FromSeconds(90),
            $"{count} dead letters in the {lane} lane",
            TimeSpan.FromMilliseconds(250));

    [Theory]
    [InlineData("cpu")]
    [InlineData("io")]
    public async Task Delete_all_removes_at_most_max_dead_letters_oldest_first_and_reports_what_remains(string lane)
    {
        var ids = new List<string>();
        for (var i = 0; i < 3; i++)
        {
            var id = await SubmitAsync(JsonSerializer.Serialize(new { type = "test.fail", payload = new { lane } }));
            await Host.WaitForStateAsync(id, "dead");
            // One after the other, so "oldest" is well defined: each is in the queue before the next is submitted. In the
            // io lane the state is "dead" a moment before MassTransit has moved the message to the error queue (the
            // status is written, then the consumer throws), and on a loaded machine the next one could overtake it.
            // Looked up, then counted: a lookup holds every dead letter before the one it finds and a count (a list of
            // one) the first two; both must hand them back in their order (the quorum queue once took them back as
            // newest, oldest, middle: docs/api.md, IoDeadLetterOrderTests).
            await Eventually.TrueAsync(async () =>
                {
                    using var found = await Host.Admin.GetAsync($"/dead-letters/{lane}/{id}");
                    return found.StatusCode == HttpStatusCode.OK;
                }, TimeSpan.FromSeconds(90), $"dead letter {id} to be listed", TimeSpan.FromMilliseconds(100));
            await WaitForDeadLetterCountAsync(lane, i + 1);
            ids.Add(id);
        }

        await WaitForDeadLetterCountAsync(lane, 3);

        using var first = await Host.Admin.DeleteAsync($"/dead-letters/{lane}?max=2");
        Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        var body = await first.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal(lane, body.GetProperty("lane").GetString());
        Assert.Equal(2, body.GetProperty("deleted").GetInt32());
        Assert.Equal(1, body.GetProperty("remaining").GetInt64());
        Assert.Equal(HttpStatusCode.NotFound, (await Host.Admin.GetAsync($"/dead-letters/{lane}/{ids[0]}")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await Host.Admin.GetAsync($"/dead-letters/{lane}/{ids[1]}")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await Host.Admin.GetAsync($"/dead-letters/{lane}/{ids[2]}")).StatusCode);

        using var rest = await Host.Admin.DeleteAsync($"/dead-letters/{lane}");
        Assert.Equal(HttpStatusCode.OK, rest.StatusCode);
        var restBody = await rest.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal(1, restBody.GetProperty("deleted").GetInt32());
        Assert.Equal(0, restBody.GetProperty("remaining").GetInt64());

        // Deleted, not replayed: the events stay dead, nothing went back to the lane.
        foreach (var id in ids)
        {
            var status = await Host.Submit.GetFromJsonAsync<JsonElement>($"/events/{id}");
            Assert.Equal("dead", status.GetProperty("state").GetString());
        }

        using var empty = await Host.Admin.DeleteAsync($"/dead-letters/{lane}?max=5");
        Assert.Equal(0, (await empty.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deleted").GetInt32());
    }

    [Fact]
    public async Task Each_io_dead_letter_operation_sees_every_dead_letter_the_one_before_it_read_and_left()
    {
        var ids = new List<string>();
        for (var i = 0; i < 3; i++)
        {
            var id = await SubmitAsync(JsonSerializer.Serialize(new { type = "test.fail", payload = new { lane = "io" } }));
            await Host.WaitForStateAsync(id, "dead");
            ids.Add(id);
        }

        await WaitForDeadLetterCountAsync("io", 3);

        // A lookup reads the error queue without acknowledging and leaves every message there; the list right after it
        // must see all of them, in order. The quorum queue takes a closed channel's unacknowledged messages back only
        // when it notices the channel is gone, so without handing them back first the list saw fewer.
        for (var round = 0; round < 20; round++)
        {
            using (var found = await Host.Admin.GetAsync($"/dead-letters/io/{ids[2]}"))
            {
                Assert.Equal(HttpStatusCode.OK, found.StatusCode);
            }

            var page = await Host.Admin.GetFromJsonAsync<JsonElement>("/dead-letters/io?limit=10");
            var listed = page.GetProperty("items").EnumerateArray().Select(i => i.GetProperty("id").GetString()!).ToList();
            Assert.True(ids.SequenceEqual(listed), $"round {round}: listed [{string.Join(", ", listed)}] right after a lookup, expected [{string.Join(", ", ids)}]");
        }

        using var cleanup = await Host.Admin.DeleteAsync("/dead-letters/io");
        Assert.Equal(3, (await cleanup.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deleted").GetInt32());
    }

    [Fact]
    public async Task Io_dead_letters_there_before_a_delete_are_deleted_while_lists_run_beside_it()
    {
        var ids = new List<string>();
        for (var i = 0; i < 3; i++)
        {
            ids.Add(await SubmitAsync(JsonSerializer.Serialize(new { type = "test.fail", payload = new { lane = "io" } })));
        }

        foreach (var id in ids)
        {
            await Host.WaitForStateAsync(id, "dead");
        }

        await WaitForDeadLetterCountAsync("io", 3);

        // A list reads the error queue without acknowledging: while it holds a message, no other reader of the queue
        // can get it. Lists (a dashboard, another operator) run beside the deletes here, as they may in production.
        using var stop = new CancellationTokenSource();
        var listed = 0;
        var readers = Enumerable.Range(0, 6).Select(_ => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                using var page = await Host.Admin.GetAsync("/dead-letters/io?limit=10", CancellationToken.None);
                Interlocked.Increment(ref listed);
            }
        })).ToArray();
        try
        {
            await Eventually.TrueAsync(() => Task.FromResult(Volatile.Read(ref listed) >= 6), TimeSpan.FromSeconds(30), "the lists to run",
                TimeSpan.FromMilliseconds(10));
            using (var one = await Host.Admin.DeleteAsync($"/dead-letters/io/{ids[0]}"))
            {
                Assert.True(one.StatusCode == HttpStatusCode.NoContent,
                    $"deleting a dead letter that was there before the request, while lists ran, answered {(int)one.StatusCode}: {await one.Content.ReadAsStringAsync()}");
            }

            using var all = await Host.Admin.DeleteAsync("/dead-letters/io");
            var body = await all.Content.ReadFromJsonAsync<JsonElement>();
            Assert.True(all.StatusCode == HttpStatusCode.OK && body.GetProperty("deleted").GetInt32() == 2,
                $"delete-all while lists ran answered {(int)all.StatusCode} {body}; the 2 dead letters left before it were not all deleted");
        }
        finally
        {
            stop.Cancel();
            await Task.WhenAll(readers);
            // Whatever the deletes left must not reach the next test.
            await Eventually.TrueAsync(async () =>
            {
                using var rest = await Host.Admin.DeleteAsync("/dead-letters/io");
                return rest.StatusCode == HttpStatusCode.OK && (await rest.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("remaining").GetInt64() == 0;
            }, TimeSpan.FromSeconds(30), "the io dead letters to be gone", TimeSpan.FromMilliseconds(250));
        }
    }

    [Theory]
    [InlineData("0")]
    [InlineData("-1")]
    [InlineData("abc")]
    [InlineData("1001")]
    public async Task Delete_all_with_a_bound_out_of_range_is_a_validation_problem(string max)
    {
        using var response = await Host.Admin.DeleteAsync($"/dead-letters/cpu?max={max}");

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        var problem = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.True(problem.GetProperty("errors").TryGetProperty("max", out _), problem.ToString());
    }

    [Fact]
    public async Task Delete_all_needs_the_admin_key_and_a_known_lane()
    {
        Assert.Equal(HttpStatusCode.Forbidden, (await Host.Submit.DeleteAsync("/dead-letters/cpu")).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await Host.Anonymous.DeleteAsync("/dead-letters/cpu")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await Host.Admin.DeleteAsync("/dead-letters/nope")).StatusCode);
    }
}
