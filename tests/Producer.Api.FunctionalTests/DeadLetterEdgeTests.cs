using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using EventPipeline.Testing;
using RabbitMQ.Client;
using StackExchange.Redis;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// The API over real brokers with no worker running: dead letters are written into the stores exactly as the lanes
/// write them, so each race can be set up deterministically (the state a racing worker or operator would leave).
/// </summary>
public sealed class DeadLetterEdgeFixture : IAsyncLifetime
{
    public const int ReplayAllLimit = 20_000;

    public static readonly TimeSpan ScanQueueTimeout = TimeSpan.FromSeconds(1);

    public PipelineHost Host { get; private set; } = null!;

    public ConnectionMultiplexer Redis { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Host = await PipelineHost.StartAsync(new Dictionary<string, string?>
        {
            ["DeadLetters__ReplayAllLimit"] = ReplayAllLimit.ToString(CultureInfo.InvariantCulture),
            ["DeadLetters__MaxScan"] = ReplayAllLimit.ToString(CultureInfo.InvariantCulture),
            // Short, so that an I/O operation queued behind deep scans runs out its wait within a test.
            ["DeadLetters__ScanQueueTimeout"] = ScanQueueTimeout.ToString(),
        });
        var options = ConfigurationOptions.Parse(Host.Redis.ConnectionString);
        options.AllowAdmin = true;
        options.AsyncTimeout = 20_000;
        Redis = await ConnectionMultiplexer.ConnectAsync(options);

        // The API declares the I/O lane's queue on its first publish: a replay needs it to exist (mandatory publish).
        using var response = await Host.Submit.PostAsJsonAsync("/events", new { type = "noop.io", payload = new { } });
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
    }

    public async Task DisposeAsync()
    {
        Redis?.Dispose();
        await Host.DisposeAsync();
    }
}

public sealed class DeadLetterEdgeTests(DeadLetterEdgeFixture fixture) : IClassFixture<DeadLetterEdgeFixture>
{
    private const string CpuStream = "events.cpu";
    private const string CpuDead = "events.cpu.dead";
    private const string IoQueue = "events-io";
    private const string IoError = "events-io_error";

    private PipelineHost Host => fixture.Host;

    private IDatabase Db => fixture.Redis.GetDatabase();

    [Theory]
    [InlineData("cpu")]
    [InlineData("io")]
    public async Task Replay_never_turns_a_succeeded_event_back_to_accepted(string lane)
    {
        var id = $"{lane}-done-{Guid.NewGuid():N}";
        await (lane == "cpu" ? InjectCpuDeadLettersAsync([id]) : InjectIoDeadLetterAsync(id));
        // What a worker leaves when it finished the event after (or while) it was dead-lettered: a duplicate ran it.
        await Db.HashSetAsync($"event:{id}", [new("state", "succeeded"), new("attempts", 1), new("completions", 1)]);
        var queuedBefore = await Host.Rabbit.MessageCountAsync(IoQueue);

        using var replay = await Host.Admin.PostAsync($"/dead-letters/{lane}/{id}/replay", null);

        var state = (string?)await Db.HashGetAsync($"event:{id}", "state");
        Assert.True(state == "succeeded",
            $"the replay answered {(int)replay.StatusCode} and the event that had succeeded now shows '{state}'");
        Assert.Equal(HttpStatusCode.OK, replay.StatusCode);
        Assert.Equal("succeeded", (await replay.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("state").GetString());
        // Nothing went back into the lane, and the stale dead letter is gone.
        if (lane == "cpu")
        {
            Assert.DoesNotContain(await Db.StreamRangeAsync(CpuStream), e => e["id"] == id);
        }
        else
        {
            Assert.Equal(queuedBefore, await Host.Rabbit.MessageCountAsync(IoQueue));
        }

        Assert.Equal(HttpStatusCode.NotFound, (await Host.Admin.GetAsync($"/dead-letters/{lane}/{id}")).StatusCode);
        Assert.Equal(1, (long)await Db.HashGetAsync($"event:{id}", "completions"));
    }

    [Fact]
    public async Task Replay_all_replays_only_the_dead_letters_present_when_it_began()
    {
        await Db.KeyDeleteAsync([CpuStream, CpuDead]);
        var present = Enumerable.Range(0, 4000).Select(i => $"present-{i}-{Guid.NewGuid():N}").ToArray();
        await InjectCpuDeadLettersAsync(present);

        var call = Host.Admin.PostAsync($"/dead-letters/cpu/replay?max={DeadLetterEdgeFixture.ReplayAllLimit}", null);
        // Once the call has begun sending events back, some of them die again at once (as test.fail does).
        await Eventually.TrueAsync(async () => call.IsCompleted || await Db.StreamLengthAsync(CpuStream) > 0,
            TimeSpan.FromSeconds(60), "the replay to start", TimeSpan.FromMilliseconds(5));
        var diedAgain = Enumerable.Range(0, 200).Select(i => $"again-{i}-{Guid.NewGuid():N}").ToArray();
        await InjectCpuDeadLettersAsync(diedAgain);

        using var response = await call;
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var report = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.True(report.GetProperty("replayed").GetInt32() == present.Length,
            $"replay-all began with {present.Length} dead letters and replayed {report.GetProperty("replayed").GetInt32()}: {report}");
        var left = (await Db.StreamRangeAsync(CpuDead)).Select(e => e["id"].ToString()).ToHashSet();
        Assert.Equal(diedAgain.Length, left.Count);
        Assert.All(diedAgain, id => Assert.Contains(id, left));
        await Db.KeyDeleteAsync([CpuStream, CpuDead]);
    }

    /// <summary>
    /// The lane's lock expires after <c>DeadLetters:LockTimeout</c> and is never renewed, so a delete (or another replay)
    /// can act on an entry between a replay's scan and its write. Here the scan is long (the entry is the oldest of
    /// 10,000) and the racing operation runs once the scan has read the entry.
    /// </summary>
    [Theory]
    [InlineData("deleted")]
    [InlineData("replayed")]
    public async Task Replay_acts_only_on_a_dead_letter_that_is_still_there(string race)
    {
        await Db.KeyDeleteAsync([CpuStream, CpuDead]);
        var id = $"raced-{Guid.NewGuid():N}";
        await InjectCpuDeadLettersAsync([id]);
        var entryId = (await Db.StreamRangeAsync(CpuDead)).Single().Id;
        await InjectCpuDeadLettersAsync(Enumerable.Range(0, 9_999).Select(i => $"filler-{i}").ToArray());
        var server = fixture.Redis.GetServer(fixture.Redis.GetEndPoints()[0]);
        await server.ConfigResetStatisticsAsync();

        var call = Host.Admin.PostAsync($"/dead-letters/cpu/{id}/replay", null);
        await Eventually.TrueAsync(async () => call.IsCompleted || await XRangeCallsAsync(server) > 0,
            TimeSpan.FromSeconds(60), "the replay to start scanning", TimeSpan.FromMilliseconds(2));
        Assert.False(call.IsCompleted, "the replay finished before the racing operation could run");

        // The racing operation, as the API would do it with the lock expired.
        Assert.Equal(1, await Db.StreamDeleteAsync(CpuDead, [entryId]));
        if (race == "replayed")
        {
            await Db.StreamAddAsync(CpuStream, [new("id", id), new("type", "test.fail"), new("payload", """{"lane":"cpu"}"""), new("attempt", 1)]);
        }

        using var response = await call;
        var inLane = (await Db.StreamRangeAsync(CpuStream)).Count(e => e["id"] == id);
        var expected = race == "replayed" ? 1 : 0;
        Assert.True(inLane == expected,
            $"the dead letter was {race} while the replay ran; the replay answered {(int)response.StatusCode} and the lane now holds {inLane} entries of the event (expected {expected})");
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        await Db.KeyDeleteAsync([CpuStream, CpuDead]);
    }

    /// <summary>
    /// <c>remaining</c> of a delete-all is what the lane still holds, also while deep lists run beside it: a list that takes
    /// this process's scan right after the delete-all hides what it holds from any count taken then. And an operation
    /// queued behind the lists past <c>DeadLetters:ScanQueueTimeout</c> is a 409 <c>dead-letter-busy</c> with
    /// <c>Retry-After</c>, not a 5xx.
    /// </summary>
    [Fact]
    public async Task Remaining_after_an_io_delete_all_counts_the_dead_letters_a_list_beside_it_holds()
    {
        var total = await InjectIoDeadLettersAsync(1500);
        const int max = 300;
        await using var connection = await Host.Rabbit.ConnectAsync();
        await using var channel = await connection.CreateChannelAsync();
        using var stop = new CancellationTokenSource();
        var lists = new List<Task>();
        var wrong = new List<string>();
        try
        {
            // The delete-all takes the scan first; deep lists queue behind it, so the next scan starts the moment it ends.
            var call = Host.Admin.DeleteAsync($"/dead-letters/io?max={max}");
            await Eventually.TrueAsync(async () => call.IsCompleted || (await channel.QueueDeclarePassiveAsync(IoError)).MessageCount < total,
                TimeSpan.FromSeconds(60), "the delete-all to start reading", TimeSpan.FromMilliseconds(1));
            lists.AddRange(Enumerable.Range(0, 2).Select(_ => DeepListsAsync(total, stop.Token)));
            using var response = await call;
            var answer = await response.Content.ReadAsStringAsync();
            Assert.True(response.StatusCode == HttpStatusCode.OK, $"the delete-all answered {(int)response.StatusCode}: {answer}");
            var body = JsonDocument.Parse(answer).RootElement;
            var deleted = body.GetProperty("deleted").GetInt32();
            var remaining = body.GetProperty("remaining");
            if (remaining.ValueKind != JsonValueKind.Number || remaining.GetInt64() != total - deleted)
            {
                wrong.Add($"remaining: {remaining} while {total - deleted} dead letters remained");
            }

            // An operation that waited DeadLetters:ScanQueueTimeout for the scans before it is a 409 busy, not a 5xx.
            await Eventually.TrueAsync(async () =>
            {
                using var lookup = await Host.Admin.GetAsync($"/dead-letters/io/no-such-{Guid.NewGuid():N}");
                var problem = await lookup.Content.ReadAsStringAsync();
                Assert.True(lookup.StatusCode is HttpStatusCode.NotFound or HttpStatusCode.Conflict,
                    $"a lookup beside deep lists answered {(int)lookup.StatusCode}: {problem}");
                return lookup.StatusCode == HttpStatusCode.Conflict
                       && problem.Contains("dead-letter-busy", StringComparison.Ordinal)
                       && lookup.Headers.Contains("Retry-After");
            }, TimeSpan.FromSeconds(60), "a lookup queued behind deep lists to be answered 409 dead-letter-busy", TimeSpan.FromMilliseconds(10));
        }
        finally
        {
            await stop.CancelAsync();
            await Task.WhenAll(lists);
            await UntilNotBusyAsync(() => Host.Admin.DeleteAsync($"/dead-letters/io?max={DeadLetterEdgeFixture.ReplayAllLimit}"));
        }

        Assert.True(wrong.Count == 0, $"delete-all (max={max}) with deep lists queued behind it answered {string.Join("; ", wrong)}");
    }

    /// <summary>Lists that read every message of the error queue (the page after the last but one), one after the other.</summary>
    private async Task DeepListsAsync(long total, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            using var response = await Host.Admin.GetAsync($"/dead-letters/io?limit=1&after={total - 2}", CancellationToken.None);
            // 503 + Retry-After is the answer for a broker too slow to answer in time, which a CI run with both its CPUs
            // busy gave a list here; the lists only keep the queue busy beside the delete-all this test is about.
            Assert.True(response.StatusCode is HttpStatusCode.OK or HttpStatusCode.Conflict
                        || (response.StatusCode == HttpStatusCode.ServiceUnavailable && response.Headers.Contains("Retry-After")),
                $"a deep list answered {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        }
    }

    /// <summary>Retries a dead-letter call while it is 409 busy (what a client does); the first other answer must be 200.</summary>
    private static async Task<JsonElement> UntilNotBusyAsync(Func<Task<HttpResponseMessage>> call)
    {
        var deadline = DateTimeOffset.UtcNow.AddSeconds(60);
        while (true)
        {
            using var response = await call();
            var body = await response.Content.ReadAsStringAsync();
            if (response.StatusCode != HttpStatusCode.Conflict || DateTimeOffset.UtcNow > deadline)
            {
                Assert.True(response.StatusCode == HttpStatusCode.OK, $"answered {(int)response.StatusCode}: {body}");
                return JsonDocument.Parse(body).RootElement.Clone();
            }
        }
    }

    /// <summary>Many I/O dead letters at once (no statuses: lists and deletes need none), oldest first.</summary>
    /// <returns>how many the lane holds now.</returns>
    private async Task<long> InjectIoDeadLettersAsync(int count)
    {
        var before = (await UntilNotBusyAsync(() => Host.Admin.GetAsync("/dead-letters/io?limit=1"))).GetProperty("total").GetInt64();
        await Host.WaitUntilIoErrorQueueIsBoundAsync();
        await using (var connection = await Host.Rabbit.ConnectAsync())
        await using (var channel = await connection.CreateChannelAsync(new CreateChannelOptions(true, true)))
        {
            for (var i = 0; i < count; i++)
            {
                var id = $"bulk-{i}-{Guid.NewGuid():N}";
                var envelope = JsonSerializer.SerializeToUtf8Bytes(new
                {
                    messageId = Guid.NewGuid(),
                    message = new { eventId = id, type = "webhook.post", payload = "{}", acceptedAt = DateTimeOffset.UtcNow },
                });
                await channel.BasicPublishAsync(IoError, "", true,
                    new BasicProperties { Persistent = true, MessageId = id, Headers = new Dictionary<string, object?> { ["MT-Fault-ExceptionType"] = "Test" } },
                    envelope);
            }
        }

        await Eventually.TrueAsync(async () =>
        {
            using var response = await Host.Admin.GetAsync("/dead-letters/io?limit=1");
            return response.StatusCode == HttpStatusCode.OK
                   && (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("total").GetInt64() == before + count;
        }, TimeSpan.FromSeconds(60), $"{before + count} I/O dead letters", TimeSpan.FromMilliseconds(50));
        return before + count;
    }

    [Theory]
    [InlineData("cpu", "foo")]
    [InlineData("cpu", "1-2-3")]
    [InlineData("io", "foo")]
    [InlineData("io", "-5")]
    public async Task Malformed_dead_letter_cursor_is_a_400_naming_the_parameter(string lane, string after)
    {
        using var response = await Host.Admin.GetAsync($"/dead-letters/{lane}?after={Uri.EscapeDataString(after)}");
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.BadRequest, $"GET /dead-letters/{lane}?after={after} answered {(int)response.StatusCode}: {body}");
        var problem = JsonDocument.Parse(body).RootElement;
        Assert.True(problem.GetProperty("errors").TryGetProperty("after", out _), body);
    }

    private static async Task<long> XRangeCallsAsync(IServer server)
    {
        var stats = await server.InfoAsync("commandstats");
        var line = stats.SelectMany(g => g).FirstOrDefault(p => p.Key == "cmdstat_xrange");
        if (line.Value is null)
        {
            return 0;
        }

        var calls = line.Value.Split(',')[0]; // calls=N
        return long.Parse(calls["calls=".Length..], CultureInfo.InvariantCulture);
    }

    /// <summary>Dead letters as Worker.Cpu's DeadLetterStream writes them, with their <c>dead</c> statuses.</summary>
    private async Task InjectCpuDeadLettersAsync(IReadOnlyList<string> ids)
    {
        var now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture);
        var batch = Db.CreateBatch();
        var writes = new List<Task>();
        foreach (var id in ids)
        {
            writes.Add(batch.StreamAddAsync(CpuDead,
            [
                new("id", id), new("type", "test.fail"), new("payload", """{"lane":"cpu"}"""), new("acceptedAt", now),
                new("attempts", 2), new("reason", "failed"), new("errorType", "RequestedTestFailureException"),
                new("errorMessage", "test.fail: this event always fails"), new("errorStack", ""), new("errors", "[]"),
                new("deadAt", now), new("sourceEntryId", "0-1"), new("traceparent", ""),
            ]));
            writes.Add(batch.HashSetAsync($"event:{id}",
                [new("id", id), new("type", "test.fail"), new("lane", "cpu"), new("state", "dead"), new("attempts", 2), new("acceptedAt", now)]));
        }

        batch.Execute();
        await Task.WhenAll(writes);
    }

    private Task InjectIoDeadLetterAsync(string id) => IoDeadLetterInjection.InjectAsync(Host, Db, id);
}

/// <summary>An I/O dead letter as MassTransit moves it to <c>events-io_error</c> after the last attempt, with its status.</summary>
internal static class IoDeadLetterInjection
{
    public static async Task InjectAsync(PipelineHost host, IDatabase db, string id)
    {
        var envelope = JsonSerializer.SerializeToUtf8Bytes(new
        {
            messageId = Guid.NewGuid(),
            messageType = new[] { "urn:message:EventPipeline.Contracts:IoEventSubmitted" },
            message = new { eventId = id, type = "webhook.post", payload = """{"n":1}""", acceptedAt = DateTimeOffset.UtcNow },
        });
        await host.WaitUntilIoErrorQueueIsBoundAsync();
        await using var connection = await host.Rabbit.ConnectAsync();
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(true, true));
        var properties = new BasicProperties
        {
            Persistent = true,
            MessageId = id,
            ContentType = "application/vnd.masstransit+json",
            Headers = new Dictionary<string, object?>
            {
                ["MT-Fault-ExceptionType"] = "EventPipeline.Worker.Io.Delivery.TransientDownstreamException",
                ["MT-Fault-Message"] = "downstream answered 503",
                ["MT-Fault-RetryCount"] = 1,
                ["MT-Fault-Timestamp"] = DateTimeOffset.UtcNow.ToString("O", CultureInfo.InvariantCulture),
            },
        };
        await channel.BasicPublishAsync("events-io_error", "", true, properties, envelope);
        await db.HashSetAsync($"event:{id}",
            [new("id", id), new("type", "webhook.post"), new("lane", "io"), new("state", "dead"), new("attempts", 2), new("finishedAt", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds())]);
        await Eventually.TrueAsync(async () => (await host.Admin.GetAsync($"/dead-letters/io/{id}")).StatusCode == HttpStatusCode.OK,
            TimeSpan.FromSeconds(30), $"the injected I/O dead letter {id} to be listed", TimeSpan.FromMilliseconds(50));
    }
}
