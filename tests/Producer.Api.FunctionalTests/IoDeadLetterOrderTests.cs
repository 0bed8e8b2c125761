using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using EventPipeline.Testing;
using RabbitMQ.Client;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>The API over real brokers with no worker: the io lane's error queue is filled by the test itself, in a known order.</summary>
public sealed class IoDeadLetterOrderFixture : IAsyncLifetime
{
    public PipelineHost Host { get; private set; } = null!;

    public async Task InitializeAsync() => Host = await PipelineHost.StartAsync();

    public async Task DisposeAsync() => await Host.DisposeAsync();
}

/// <summary>
/// Reads of the io lane's dead letters (lists, lookups) leave the error queue in the order it had: "oldest first" for a
/// later list, replay-all or <c>DELETE ?max=</c> means what it says. RabbitMQ 3.10's quorum queue puts what a closed
/// channel held behind the handed-back messages nobody held, and takes back one channel's basic.get messages in the
/// order of their consumer tags as text ("1", "10", "11", "2"), so a read that held part of the queue, or more than nine
/// messages on one channel, reordered it.
/// </summary>
public sealed class IoDeadLetterOrderTests(IoDeadLetterOrderFixture fixture) : IClassFixture<IoDeadLetterOrderFixture>
{
    private PipelineHost Host => fixture.Host;

    [Fact]
    public async Task A_list_that_holds_part_of_the_queue_after_a_lookup_of_the_newest_keeps_the_order()
    {
        // The evidence of session 11: a lookup of the newest of three, then a read of the first two (?limit=1 reads one
        // more to know whether there is a next page); the list after showed newest, oldest, middle.
        var ids = await InjectAsync(3);
        await LookUpAsync(ids[2]);
        using (await Host.Admin.GetAsync("/dead-letters/io?limit=1"))
        {
        }

        Assert.Equal(ids, await ListAsync());

        // And so the bounded delete takes the two oldest.
        using var deleted = await Host.Admin.DeleteAsync("/dead-letters/io?max=2");
        Assert.Equal(2, (await deleted.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deleted").GetInt32());
        Assert.Equal([ids[2]], await ListAsync());
        await DeleteAllAsync();
    }

    [Fact]
    public async Task Lookups_between_submissions_keep_the_order()
    {
        // DeadLetterDeleteAllTests before a3e3ef6: each dead letter looked up once it is there, before the next one comes.
        var ids = new List<string>();
        for (var i = 0; i < 3; i++)
        {
            ids.AddRange(await InjectAsync(1, clear: i == 0));
            await LookUpAsync(ids[^1]);
            using (await Host.Admin.GetAsync("/dead-letters/io?limit=1"))
            {
            }
        }

        Assert.Equal(ids, await ListAsync());
        await DeleteAllAsync();
    }

    [Fact]
    public async Task A_read_that_holds_more_than_nine_dead_letters_keeps_the_order()
    {
        var ids = await InjectAsync(25);
        // Every read below holds all 25 at once (the lookup of the newest, a list of all), then hands them back.
        await LookUpAsync(ids[^1]);
        Assert.Equal(ids, await ListAsync());
        Assert.Equal(ids, await ListAsync());
        await DeleteAllAsync();
    }

    [Fact]
    public async Task A_dead_letter_read_many_times_stays_in_the_queue()
    {
        // Every hand-back counts as a delivery (x-delivery-count); the error queue has no delivery limit, so reads never
        // drop a dead letter (RabbitMQ 4 would give a quorum queue a limit of 20 by default: more reads than that here).
        var ids = await InjectAsync(2);
        for (var i = 0; i < 25; i++)
        {
            await LookUpAsync(ids[^1]);
        }

        Assert.Equal(ids, await ListAsync());
        await DeleteAllAsync();
    }

    [Fact]
    public async Task A_broker_dead_lettered_letters_attempts_do_not_grow_with_reads()
    {
        // The broker dead-lettered it at the lane's delivery limit (no MassTransit fault headers): its attempts are the
        // limit and one more, however often the error queue itself has delivered it to reads (x-delivery-count).
        var ids = await InjectAsync(1, brokerDeadLettered: true);
        var seen = new List<int?>();
        for (var i = 0; i < 3; i++)
        {
            var letter = await Host.Admin.GetFromJsonAsync<JsonElement>($"/dead-letters/io/{ids[0]}");
            Assert.Equal("delivery-limit", letter.GetProperty("reason").GetString());
            seen.Add(letter.GetProperty("attempts").ValueKind == JsonValueKind.Number ? letter.GetProperty("attempts").GetInt32() : null);
        }

        Assert.Equal([4, 4, 4], seen); // IoLaneTopology.DeliveryLimit (3) + 1
        await DeleteAllAsync();
    }

    private async Task LookUpAsync(string id)
    {
        using var found = await Host.Admin.GetAsync($"/dead-letters/io/{id}");
        Assert.Equal(HttpStatusCode.OK, found.StatusCode);
    }

    private async Task<List<string>> ListAsync()
    {
        var page = await Host.Admin.GetFromJsonAsync<JsonElement>("/dead-letters/io?limit=500");
        return page.GetProperty("items").EnumerateArray().Select(item => item.GetProperty("id").GetString()!).ToList();
    }

    private async Task DeleteAllAsync()
    {
        using var all = await Host.Admin.DeleteAsync("/dead-letters/io");
        Assert.Equal(0, (await all.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("remaining").GetInt64());
    }

    /// <summary>Publishes <paramref name="count"/> dead letters into the error queue one after the other, each confirmed before the next.</summary>
    private async Task<List<string>> InjectAsync(int count, bool clear = true, bool brokerDeadLettered = false)
    {
        if (clear)
        {
            await DeleteAllAsync(); // a failed test before must not leave dead letters here
        }

        await Host.WaitUntilIoErrorQueueIsBoundAsync();
        await using var connection = await Host.Rabbit.ConnectAsync();
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(true, true));
        var ids = new List<string>();
        for (var i = 0; i < count; i++)
        {
            var id = $"order-{i:D2}-{Guid.NewGuid():N}";
            var envelope = JsonSerializer.SerializeToUtf8Bytes(new
            {
                messageId = Guid.NewGuid(),
                message = new { eventId = id, type = "webhook.post", payload = "{}", acceptedAt = DateTimeOffset.UtcNow },
            });
            await channel.BasicPublishAsync("events-io_error", "", true,
                new BasicProperties
                {
                    Persistent = true,
                    MessageId = id,
                    Headers = brokerDeadLettered
                        ? new Dictionary<string, object?> { ["x-first-death-reason"] = "delivery_limit", ["x-first-death-queue"] = "events-io" }
                        : new Dictionary<string, object?> { ["MT-Fault-ExceptionType"] = "Test" },
                },
                envelope);
            ids.Add(id);
        }

        return ids;
    }
}
