using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using EventPipeline.Testing;
using StackExchange.Redis;
using Xunit.Abstractions;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>The API, both workers and the receiver over real brokers, shared by the timed-event tests.</summary>
public sealed class TimedEventsFixture : IAsyncLifetime
{
    public PipelineHost Host { get; private set; } = null!;

    /// <summary>
    /// The workers ship with tiered compilation off (its background re-JIT lands in idle periods: docs/operations.md);
    /// eng/test.sh turns it on for every process the suite starts. This fixture's workers run as they ship, since
    /// <see cref="DelayedEventTests.Scheduled_backlog_costs_the_workers_no_cpu_while_it_waits"/> measures their idle cost.
    /// </summary>
    private const string ShippedJit = "DOTNET_TieredCompilation";

    public ChildProcess CpuWorker { get; private set; } = null!;

    public ChildProcess IoWorker { get; private set; } = null!;

    public int ReceiverPort { get; private set; }

    public ConnectionMultiplexer Redis { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Host = await PipelineHost.StartAsync();
        var (_, port) = await Host.StartReceiverAsync();
        ReceiverPort = port;
        CpuWorker = await Host.StartCpuWorkerAsync(new Dictionary<string, string?>
        {
            // Long enough to cancel an event while it waits for its retry.
            ["CpuLane__RetryBaseDelay"] = "00:00:03",
            ["CpuLane__RetryMaxDelay"] = "00:00:04",
            [ShippedJit] = "0",
        });
        IoWorker = await Host.StartIoWorkerAsync(ReceiverPort, new Dictionary<string, string?> { [ShippedJit] = "0" });
        Redis = await Host.Redis.ConnectAsync();
    }

    public async Task DisposeAsync()
    {
        Redis?.Dispose();
        await Host.DisposeAsync();
    }
}

/// <summary>
/// Delayed (<c>notBefore</c>, <c>delay</c>), expiring (<c>expiresAt</c>) and cancelled events, end to end on both lanes:
/// held in Redis as <c>scheduled</c>, never started early, never run once cancelled or expired.
/// </summary>
public sealed class DelayedEventTests(TimedEventsFixture fixture, ITestOutputHelper output) : IClassFixture<TimedEventsFixture>
{
    /// <summary>The start slack the docs promise (docs/scheduling.md): generous for a loaded 2-core CI machine.</summary>
    private static readonly TimeSpan Slack = TimeSpan.FromSeconds(3);

    private PipelineHost Host => fixture.Host;

    private IDatabase Db => fixture.Redis.GetDatabase();

    [Theory]
    [InlineData("noop.cpu", "cpu")]
    [InlineData("noop.io", "io")]
    public async Task Delayed_event_does_not_start_before_its_time_and_starts_within_the_slack(string type, string lane)
    {
        var id = $"delayed-{lane}-{Guid.NewGuid():N}";
        var notBefore = DateTimeOffset.UtcNow.AddSeconds(3);
        var response = await SubmitAsync(new { id, type, payload = new { }, notBefore = notBefore.ToString("O") });
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal("scheduled", body.GetProperty("state").GetString());

        var status = await Host.Submit.GetFromJsonAsync<JsonElement>($"/events/{id}");
        Assert.Equal("scheduled", status.GetProperty("state").GetString());
        Assert.Equal(notBefore.ToUnixTimeMilliseconds(), status.GetProperty("notBefore").GetDateTimeOffset().ToUnixTimeMilliseconds());
        Assert.NotNull(await Db.SortedSetScoreAsync($"events.{lane}.scheduled", id));
        var lanes = await Host.Submit.GetFromJsonAsync<JsonElement>("/lanes");
        Assert.True(lanes.GetProperty("lanes").EnumerateArray().Single(l => l.GetProperty("name").GetString() == lane).GetProperty("scheduled").GetInt64() >= 1);

        // Times are kept in whole milliseconds.
        notBefore = DateTimeOffset.FromUnixTimeMilliseconds(notBefore.ToUnixTimeMilliseconds());
        var done = await Host.WaitForStateAsync(id, "succeeded", TimeSpan.FromSeconds(60));
        var started = done.GetProperty("startedAt").GetDateTimeOffset();
        Assert.True(started >= notBefore, $"{id} started at {started:O}, before its notBefore {notBefore:O}");
        Assert.True(started - notBefore <= Slack, $"{id} started {(started - notBefore).TotalMilliseconds} ms after its notBefore (slack {Slack})");
        Assert.Null(await Db.SortedSetScoreAsync($"events.{lane}.scheduled", id));
    }

    [Fact]
    public async Task Ten_thousand_delayed_events_spread_over_thirty_seconds_all_run_none_early_none_lost()
    {
        // The benchmark in docs/benchmarks.md runs this with more events over a longer spread (see there).
        var count = Setting("EVENTPIPELINE_DELAYED_COUNT", 10_000);
        var start = DateTimeOffset.UtcNow.AddSeconds(8);
        var spread = TimeSpan.FromSeconds(Setting("EVENTPIPELINE_DELAYED_SPREAD_SECONDS", 30));
        var prefix = $"spread-{Guid.NewGuid():N}-";
        var events = Enumerable.Range(0, count).Select(i => new
        {
            id = prefix + i,
            type = i % 2 == 0 ? "noop.cpu" : "noop.io",
            payload = new { },
            notBefore = (start + spread * ((double)i / count)).ToString("O"),
        }).ToList();
        foreach (var chunk in events.Chunk(1000))
        {
            await SubmitBatchAsync(chunk);
        }

        var notBefore = events.ToDictionary(e => e.id, e => DateTimeOffset.Parse(e.notBefore, System.Globalization.CultureInfo.InvariantCulture));
        Dictionary<string, (string? State, long? StartedAt)> seen = [];
        await Eventually.TrueAsync(async () =>
        {
            seen = await ReadStatesAsync(events.Select(e => e.id).ToList());
            return seen.Values.All(s => s.State == "succeeded");
        }, spread + TimeSpan.FromSeconds(90), $"all {count} delayed events to succeed", TimeSpan.FromSeconds(1));

        var slacks = seen.Select(p => p.Value.StartedAt!.Value - notBefore[p.Key].ToUnixTimeMilliseconds()).Order().ToList();
        var early = seen.Where(p => p.Value.StartedAt < notBefore[p.Key].ToUnixTimeMilliseconds()).Select(p => p.Key).ToList();
        Assert.True(early.Count == 0, $"{early.Count} events started before their notBefore, e.g. {string.Join(", ", early.Take(5))}");
        foreach (var lane in new[] { "cpu", "io" })
        {
            var slack = seen.Where(p => events[int.Parse(p.Key[prefix.Length..], System.Globalization.CultureInfo.InvariantCulture)].type == $"noop.{lane}")
                .Select(p => p.Value.StartedAt!.Value - notBefore[p.Key].ToUnixTimeMilliseconds()).Order().ToList();
            output.WriteLine($"{lane} lane, start slack (startedAt - notBefore) over {slack.Count} events spread over {spread.TotalSeconds} s: " +
                             $"p50 {slack[slack.Count / 2]} ms, p99 {slack[slack.Count * 99 / 100]} ms, max {slack[^1]} ms");
        }
    }

    [Fact]
    public async Task Scheduled_backlog_costs_the_workers_no_cpu_while_it_waits()
    {
        // CI holds 20,000 events an hour ahead for 10 s; docs/benchmarks.md runs 100,000 for 60 s.
        var count = Setting("EVENTPIPELINE_IDLE_BACKLOG", 20_000);
        var window = TimeSpan.FromSeconds(Setting("EVENTPIPELINE_IDLE_SECONDS", 10));
        var prefix = $"idle-{Guid.NewGuid():N}-";
        var notBefore = DateTimeOffset.UtcNow.AddHours(1).ToString("O");
        foreach (var chunk in Enumerable.Range(0, count).Chunk(1000))
        {
            var batch = chunk.Select(i => new { id = prefix + i, type = i % 2 == 0 ? "noop.cpu" : "noop.io", payload = new { }, notBefore }).ToList();
            await SubmitBatchAsync(batch);
        }

        try
        {
            var processes = new[] { ("Worker.Cpu", fixture.CpuWorker.Pid), ("Worker.Io", fixture.IoWorker.Pid), ("Producer.Api", Host.Api.Pid) };
            var before = processes.Select(p => CpuSeconds(p.Pid)).ToArray();
            var clock = System.Diagnostics.Stopwatch.StartNew();
            await Eventually.TrueAsync(() => Task.FromResult(clock.Elapsed >= window), window + TimeSpan.FromSeconds(30), "the measuring window to pass", TimeSpan.FromMilliseconds(50));
            var elapsed = clock.Elapsed.TotalSeconds;
            var used = processes.Select((p, i) => (p.Item1, Share: (CpuSeconds(p.Pid) - before[i]) / elapsed)).ToList();
            output.WriteLine($"{count} events scheduled an hour ahead, {elapsed:F1} s: " + string.Join(", ", used.Select(u => $"{u.Item1} {u.Share:P1} of a core")));
            Assert.True(await Db.SortedSetLengthAsync("events.cpu.scheduled") + await Db.SortedSetLengthAsync("events.io.scheduled") >= count);
            foreach (var (name, share) in used.Take(2))
            {
                Assert.True(share < 0.10, $"{name} used {share:P1} of a core while {count} events waited an hour ahead");
            }
        }
        finally
        {
            // Leave the shared fixture as it was: the backlog goes (cancelled), nothing of it runs.
            var db = Db;
            foreach (var lane in new[] { "cpu", "io" })
            {
                await db.SortedSetRemoveRangeByScoreAsync($"events.{lane}.scheduled", DateTimeOffset.UtcNow.AddMinutes(30).ToUnixTimeMilliseconds(), double.PositiveInfinity);
            }
        }
    }

    /// <summary>User plus system CPU time of a process so far (<c>/proc/{pid}/stat</c>, fields 14 and 15, in clock ticks of 10 ms).</summary>
    private static double CpuSeconds(int pid)
    {
        var stat = File.ReadAllText($"/proc/{pid}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return (long.Parse(fields[11], System.Globalization.CultureInfo.InvariantCulture) + long.Parse(fields[12], System.Globalization.CultureInfo.InvariantCulture)) / 100.0;
    }

    private static int Setting(string name, int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), out var value) && value > 0 ? value : fallback;

    [Fact]
    public async Task Cancelled_scheduled_event_is_never_run_on_either_lane()
    {
        var delay = 2;
        var cancelled = new[] { ("noop.cpu", $"cancel-cpu-{Guid.NewGuid():N}"), ("noop.io", $"cancel-io-{Guid.NewGuid():N}") };
        foreach (var (type, id) in cancelled)
        {
            Assert.Equal(HttpStatusCode.Accepted, (await SubmitAsync(new { id, type, payload = new { }, delay })).StatusCode);
            var cancel = await Host.Submit.PostAsync($"/events/{id}/cancel", null);
            Assert.Equal(HttpStatusCode.OK, cancel.StatusCode);
            var status = await cancel.Content.ReadFromJsonAsync<JsonElement>();
            Assert.Equal("cancelled", status.GetProperty("state").GetString());
            Assert.True(status.TryGetProperty("cancelledAt", out var at) && at.ValueKind == JsonValueKind.String);
            // Repeating the cancel is harmless.
            Assert.Equal(HttpStatusCode.OK, (await Host.Submit.PostAsync($"/events/{id}/cancel", null)).StatusCode);
        }

        // Controls submitted after them with the same delay: once they ran, the cancelled ones had their chance.
        var controls = new[] { ("noop.cpu", $"control-cpu-{Guid.NewGuid():N}"), ("noop.io", $"control-io-{Guid.NewGuid():N}") };
        foreach (var (type, id) in controls)
        {
            Assert.Equal(HttpStatusCode.Accepted, (await SubmitAsync(new { id, type, payload = new { }, delay })).StatusCode);
        }

        foreach (var (_, id) in controls)
        {
            await Host.WaitForStateAsync(id, "succeeded", TimeSpan.FromSeconds(60));
        }

        foreach (var (_, id) in cancelled)
        {
            var status = await Host.Submit.GetFromJsonAsync<JsonElement>($"/events/{id}");
            Assert.Equal("cancelled", status.GetProperty("state").GetString());
            Assert.Equal(JsonValueKind.Null, status.GetProperty("startedAt").ValueKind);
        }
    }

    [Fact]
    public async Task Cancelled_event_waiting_in_its_lane_is_acknowledged_and_never_run()
    {
        var ids = new[] { ("noop.cpu", $"queued-cpu-{Guid.NewGuid():N}"), ("webhook.post", $"queued-io-{Guid.NewGuid():N}") };
        await using (ProcessPause.Of(fixture.CpuWorker.Pid))
        await using (ProcessPause.Of(fixture.IoWorker.Pid))
        {
            foreach (var (type, id) in ids)
            {
                Assert.Equal(HttpStatusCode.Accepted, (await SubmitAsync(new { id, type, payload = new { } })).StatusCode);
                await Host.WaitForStateAsync(id, "accepted", TimeSpan.FromSeconds(30));
                Assert.Equal(HttpStatusCode.OK, (await Host.Submit.PostAsync($"/events/{id}/cancel", null)).StatusCode);
            }
        }

        // The copies in the lanes are taken up and acknowledged without running: the lanes drain, nothing reaches downstream.
        await Eventually.TrueAsync(async () =>
            (await Db.StreamPendingAsync("events.cpu", "cpu-workers")).PendingMessageCount == 0
            && await IoMessagesAsync() == 0,
            TimeSpan.FromSeconds(60), "both lanes to drain", TimeSpan.FromMilliseconds(200));
        var control = $"queued-control-{Guid.NewGuid():N}";
        Assert.Equal(HttpStatusCode.Accepted, (await SubmitAsync(new { id = control, type = "webhook.post", payload = new { } })).StatusCode);
        await Host.WaitForStateAsync(control, "succeeded", TimeSpan.FromSeconds(60));

        foreach (var (_, id) in ids)
        {
            var status = await Host.Submit.GetFromJsonAsync<JsonElement>($"/events/{id}");
            Assert.Equal("cancelled", status.GetProperty("state").GetString());
            Assert.Equal(JsonValueKind.Null, status.GetProperty("startedAt").ValueKind);
        }

        using var receiver = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{fixture.ReceiverPort}") };
        var delivered = await receiver.GetFromJsonAsync<JsonElement>($"/received/{ids[1].Item2}");
        Assert.Equal(0, delivered.GetProperty("count").GetInt32());
    }

    [Fact]
    public async Task Cancelled_event_waiting_for_a_retry_never_runs_again()
    {
        var id = $"retry-cancel-{Guid.NewGuid():N}";
        Assert.Equal(HttpStatusCode.Accepted, (await SubmitAsync(new { id, type = "test.fail", payload = new { lane = "cpu", failTimes = 1 } })).StatusCode);
        await Host.WaitForStateAsync(id, "retrying", TimeSpan.FromSeconds(60));
        var cancel = await Host.Submit.PostAsync($"/events/{id}/cancel", null);
        Assert.Equal(HttpStatusCode.OK, cancel.StatusCode);

        // The retry comes due (3-4 s), is moved back into the stream, and the start check acknowledges it.
        await Eventually.TrueAsync(async () =>
            await Db.SortedSetLengthAsync("events.cpu.delayed") == 0
            && (await Db.StreamPendingAsync("events.cpu", "cpu-workers")).PendingMessageCount == 0
            && (await Db.StreamGroupInfoAsync("events.cpu")).All(g => g.Lag is 0 or null),
            TimeSpan.FromSeconds(60), "the cancelled retry to come due and be acknowledged", TimeSpan.FromMilliseconds(200));
        var status = await Host.Submit.GetFromJsonAsync<JsonElement>($"/events/{id}");
        Assert.Equal("cancelled", status.GetProperty("state").GetString());
        Assert.Equal(1, status.GetProperty("attempts").GetInt32());
    }

    [Fact]
    public async Task Cancelling_a_running_event_answers_409_with_its_state()
    {
        var id = $"running-{Guid.NewGuid():N}";
        Assert.Equal(HttpStatusCode.Accepted, (await SubmitAsync(new { id, type = "hash.pbkdf2", payload = new { data = "x", iterations = 3_000_000 } })).StatusCode);
        await Host.WaitForStateAsync(id, "processing", TimeSpan.FromSeconds(60));
        await using (ProcessPause.Of(fixture.CpuWorker.Pid))
        {
            var cancel = await Host.Submit.PostAsync($"/events/{id}/cancel", null);
            Assert.Equal(HttpStatusCode.Conflict, cancel.StatusCode);
            var problem = await cancel.Content.ReadFromJsonAsync<JsonElement>();
            Assert.Equal("processing", problem.GetProperty("state").GetString());
        }

        await Host.WaitForStateAsync(id, "succeeded", TimeSpan.FromSeconds(60));
        Assert.Equal(HttpStatusCode.NotFound, (await Host.Submit.PostAsync($"/events/no-such-{Guid.NewGuid():N}/cancel", null)).StatusCode);
    }

    [Fact]
    public async Task Expired_event_is_never_run_and_ends_expired_on_either_lane()
    {
        var ids = new[] { ("noop.cpu", $"expiring-cpu-{Guid.NewGuid():N}"), ("webhook.post", $"expiring-io-{Guid.NewGuid():N}") };
        var expiresAt = DateTimeOffset.UtcNow.AddSeconds(2);
        await using (ProcessPause.Of(fixture.CpuWorker.Pid))
        await using (ProcessPause.Of(fixture.IoWorker.Pid))
        {
            foreach (var (type, id) in ids)
            {
                Assert.Equal(HttpStatusCode.Accepted, (await SubmitAsync(new { id, type, payload = new { }, expiresAt = expiresAt.ToString("O") })).StatusCode);
            }

            // Both are in their lanes (promoted at once) while no worker can take them before they expire.
            foreach (var (_, id) in ids)
            {
                await Host.WaitForStateAsync(id, "accepted", TimeSpan.FromSeconds(30));
            }

            await Eventually.TrueAsync(() => Task.FromResult(DateTimeOffset.UtcNow > expiresAt.AddMilliseconds(200)),
                TimeSpan.FromSeconds(10), "the events' expiry to pass", TimeSpan.FromMilliseconds(50));
        }

        foreach (var (_, id) in ids)
        {
            var status = await Host.WaitForStateAsync(id, "expired", TimeSpan.FromSeconds(60));
            Assert.True(status.GetProperty("expiredAt").GetDateTimeOffset() >= expiresAt);
            Assert.Equal(JsonValueKind.Null, status.GetProperty("startedAt").ValueKind);
        }

        using var receiver = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{fixture.ReceiverPort}") };
        Assert.Equal(0, (await receiver.GetFromJsonAsync<JsonElement>($"/received/{ids[1].Item2}")).GetProperty("count").GetInt32());
        Assert.Equal(0, await Db.StreamLengthAsync("events.cpu.dead"));
    }

    [Fact]
    public async Task Scheduled_event_that_expires_before_it_is_promoted_never_enters_its_lane()
    {
        var ids = new[] { ("noop.cpu", "cpu", $"late-cpu-{Guid.NewGuid():N}"), ("webhook.post", "io", $"late-io-{Guid.NewGuid():N}") };
        var expiresAt = DateTimeOffset.UtcNow.AddSeconds(2);
        foreach (var (type, _, id) in ids)
        {
            Assert.Equal(HttpStatusCode.Accepted, (await SubmitAsync(new { id, type, payload = new { }, delay = 1, expiresAt = expiresAt.ToString("O") })).StatusCode);
        }

        // The only promoter (the API's) is frozen past both the start and the expiry.
        await using (ProcessPause.Of(Host.Api.Pid))
        {
            await Eventually.TrueAsync(() => Task.FromResult(DateTimeOffset.UtcNow > expiresAt.AddMilliseconds(200)),
                TimeSpan.FromSeconds(10), "the events' expiry to pass", TimeSpan.FromMilliseconds(50));
        }

        foreach (var (_, lane, id) in ids)
        {
            var status = await Host.WaitForStateAsync(id, "expired", TimeSpan.FromSeconds(60));
            Assert.Equal(JsonValueKind.Null, status.GetProperty("startedAt").ValueKind);
            Assert.Null(await Db.SortedSetScoreAsync($"events.{lane}.scheduled", id));
            Assert.False(await Db.KeyExistsAsync($"events.scheduled.body:{id}"));
        }

        using var receiver = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{fixture.ReceiverPort}") };
        Assert.Equal(0, (await receiver.GetFromJsonAsync<JsonElement>($"/received/{ids[1].Item3}")).GetProperty("count").GetInt32());
    }

    [Fact]
    public async Task A_second_copy_of_a_promoted_io_event_reaches_downstream_once()
    {
        // What a promoter that died between its confirmed publish and the removal leaves behind: the entry back in the
        // set under an expired lease, the status still scheduled. The next promoter publishes the same id again.
        var id = $"copy-{Guid.NewGuid():N}";
        await using (ProcessPause.Of(fixture.IoWorker.Pid))
        {
            Assert.Equal(HttpStatusCode.Accepted, (await SubmitAsync(new { id, type = "webhook.post", payload = new { }, delay = 0.5 })).StatusCode);
            var body = await Db.StringGetAsync($"events.scheduled.body:{id}");
            Assert.False(body.IsNull);
            await Host.WaitForStateAsync(id, "accepted", TimeSpan.FromSeconds(30));
            await Db.StringSetAsync($"events.scheduled.body:{id}", body);
            await Db.HashSetAsync($"event:{id}", "state", "scheduled");
            await Db.SortedSetAddAsync("events.io.scheduled", id, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
            await Eventually.TrueAsync(async () => await IoMessagesAsync() == 2,
                TimeSpan.FromSeconds(30), "the second copy to be published", TimeSpan.FromMilliseconds(200));
        }

        await Host.WaitForStateAsync(id, "succeeded", TimeSpan.FromSeconds(60));
        await Eventually.TrueAsync(async () => await IoMessagesAsync() == 0,
            TimeSpan.FromSeconds(60), "both copies to be acknowledged", TimeSpan.FromMilliseconds(200));
        using var receiver = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{fixture.ReceiverPort}") };
        var received = await receiver.GetFromJsonAsync<JsonElement>($"/received/{id}");
        Assert.Equal(1, received.GetProperty("count").GetInt32());
        Assert.Equal(1, (long)await Db.HashGetAsync($"event:{id}", "completions"));
    }

    [Fact]
    public async Task Bad_cron_or_unknown_time_zone_answers_400_and_stores_nothing()
    {
        var bodies = new (string Json, string Field)[]
        {
            ("""{"cron":"not a cron","event":{"type":"noop.cpu","payload":{}}}""", "cron"),
            ("""{"cron":"* * *","event":{"type":"noop.cpu","payload":{}}}""", "cron"),
            ("""{"cron":"61 * * * *","event":{"type":"noop.cpu","payload":{}}}""", "cron"),
            ("""{"cron":"*/5 * * * *","timeZone":"Mars/Olympus_Mons","event":{"type":"noop.cpu","payload":{}}}""", "timeZone"),
            ("""{"cron":"*/5 * * * *","misfire":"sometimes","event":{"type":"noop.cpu","payload":{}}}""", "misfire"),
            ("""{"cron":"*/5 * * * *","event":{"type":"no.such.type","payload":{}}}""", "event.type"),
            ("""{"cron":"*/5 * * * *","event":{"id":"fixed","type":"noop.cpu","payload":{}}}""", "event.id"),
            ("""{"cron":"*/5 * * * *"}""", "event"),
        };
        foreach (var (json, field) in bodies)
        {
            var response = await Host.Admin.PutAsync("/schedules/bad", new StringContent(json, Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
            Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
            var problem = await response.Content.ReadFromJsonAsync<JsonElement>();
            Assert.True(problem.GetProperty("errors").TryGetProperty(field, out _), $"{json}: no error for {field}: {problem}");
        }

        Assert.Equal(HttpStatusCode.NotFound, (await Host.Admin.GetAsync("/schedules/bad")).StatusCode);
        Assert.Equal(HttpStatusCode.Forbidden, (await Host.Submit.PutAsJsonAsync("/schedules/bad", new { cron = "* * * * *" })).StatusCode);
        var list = await Host.Admin.GetFromJsonAsync<JsonElement>("/schedules");
        Assert.DoesNotContain(list.GetProperty("schedules").EnumerateArray(), s => s.GetProperty("name").GetString() == "bad");

        // A valid one in a time zone, then deleted.
        var ok = await Host.Admin.PutAsJsonAsync("/schedules/nightly", new { cron = "0 3 * * *", timeZone = "Europe/Berlin", misfire = "skip", @event = new { type = "noop.io", payload = new { } } });
        Assert.Equal(HttpStatusCode.Created, ok.StatusCode);
        var nightly = await ok.Content.ReadFromJsonAsync<JsonElement>();
        var next = nightly.GetProperty("nextFireAt").GetDateTimeOffset();
        Assert.Equal(3, TimeZoneInfo.ConvertTime(next, TimeZoneInfo.FindSystemTimeZoneById("Europe/Berlin")).Hour);
        Assert.Equal(HttpStatusCode.NoContent, (await Host.Admin.DeleteAsync("/schedules/nightly")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await Host.Admin.GetAsync("/schedules/nightly")).StatusCode);

        // The scheduled gauge the Grafana panel reads is exported per lane.
        var metrics = await Eventually.ReturnsAsync(() => Host.Anonymous.GetStringAsync("/metrics"),
            m => m.Contains("eventpipeline_lane_scheduled{", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "the scheduled gauge to be exported");
        Assert.Contains("lane=\"io\"", metrics.Split('\n').Where(l => l.StartsWith("eventpipeline_lane_scheduled{", StringComparison.Ordinal)).Aggregate("", string.Concat));

        // The OpenAPI document describes the new endpoints and fields.
        var openApi = await Host.Anonymous.GetStringAsync("/openapi/v1.json");
        foreach (var expected in new[] { "/schedules/{name}", "/schedules/{name}/pause", "/events/{id}/cancel", "notBefore", "expiresAt", "scheduled" })
        {
            Assert.Contains(expected, openApi);
        }
    }

    public static TheoryData<string, string> BadTiming() => new()
    {
        { """{"type":"noop.cpu","payload":{},"delay":5,"notBefore":"2030-01-01T00:00:00Z"}""", "delay" },
        { """{"type":"noop.cpu","payload":{},"notBefore":"2999-01-01T00:00:00Z"}""", "notBefore" },
        { """{"type":"noop.io","payload":{},"notBefore":"2001-01-01T00:00:00Z"}""", "notBefore" },
        { """{"type":"noop.io","payload":{},"notBefore":"tomorrow"}""", "notBefore" },
        { """{"type":"noop.io","payload":{},"notBefore":"2030-01-01T00:00:00"}""", "notBefore" },
        { """{"type":"noop.cpu","payload":{},"delay":-1}""", "delay" },
        { """{"type":"noop.cpu","payload":{},"delay":"10"}""", "delay" },
        { """{"type":"noop.cpu","payload":{},"delay":99999999}""", "delay" },
        { """{"type":"noop.cpu","payload":{},"delay":60,"expiresAt":"2020-01-01T00:00:00Z"}""", "expiresAt" },
    };

    [Theory]
    [MemberData(nameof(BadTiming))]
    public async Task Bad_timing_answers_400_ProblemDetails_and_schedules_nothing(string json, string field)
    {
        var id = $"bad-{Guid.NewGuid():N}";
        var withId = "{\"id\":\"" + id + "\"," + json[1..];
        var before = await Db.SortedSetLengthAsync("events.cpu.scheduled") + await Db.SortedSetLengthAsync("events.io.scheduled");
        var response = await Host.Submit.PostAsync("/events", new StringContent(withId, Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        var problem = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.True(problem.GetProperty("errors").TryGetProperty(field, out _), $"no error for {field}: {problem}");
        Assert.False(await Db.KeyExistsAsync($"event:{id}"));
        Assert.False(await Db.KeyExistsAsync($"events.scheduled.body:{id}"));
        Assert.Equal(before, await Db.SortedSetLengthAsync("events.cpu.scheduled") + await Db.SortedSetLengthAsync("events.io.scheduled"));
    }

    /// <summary>Messages in the I/O queue, ready or delivered and not yet acknowledged (a paused worker holds its prefetch).</summary>
    private async Task<long> IoMessagesAsync()
    {
        var lines = (await Host.Rabbit.CtlAsync("list_queues", "name", "messages", "--quiet")).Split('\n');
        var line = lines.Select(l => l.Split('\t', ' ')).FirstOrDefault(f => f[0] == "events-io");
        return line is null ? 0 : long.Parse(line[^1].Trim(), System.Globalization.CultureInfo.InvariantCulture);
    }

    private Task<HttpResponseMessage> SubmitAsync(object body) => Host.Submit.PostAsJsonAsync("/events", body);

    /// <summary>
    /// Submits a batch as a client should: a 503 (the broker did not confirm within the API's timeout, as on a loaded
    /// machine) or a 409 <c>idempotency-in-flight</c> (the first try's reservations still held) is retried after its
    /// Retry-After with the same ids, which the API takes once whatever the first try left held. A retry may find every
    /// event held by the try the API answered 503 (its transaction committed after the timeout): 200
    /// <c>Idempotent-Replayed</c>, a success here. Anything else fails the test at once.
    /// </summary>
    private async Task SubmitBatchAsync<T>(IReadOnlyCollection<T> events)
    {
        var deadline = DateTimeOffset.UtcNow.AddSeconds(90);
        var retried = false;
        while (true)
        {
            using var response = await Host.Submit.PostAsJsonAsync("/events/batch", new { events });
            var body = await response.Content.ReadAsStringAsync();
            if (response.StatusCode == HttpStatusCode.Accepted
                || (retried && response.StatusCode == HttpStatusCode.OK && response.Headers.Contains("Idempotent-Replayed")))
            {
                return;
            }

            var retryable = response.StatusCode == HttpStatusCode.ServiceUnavailable
                || (response.StatusCode == HttpStatusCode.Conflict && body.Contains("idempotency-in-flight", StringComparison.Ordinal));
            Assert.True(retryable && DateTimeOffset.UtcNow < deadline,
                $"batch of {events.Count} answered {(int)response.StatusCode}{(retried ? " on a retry" : "")}: {body}");
            Assert.True(response.Headers.TryGetValues("Retry-After", out var after),
                $"batch of {events.Count} answered {(int)response.StatusCode} without Retry-After: {body}");
            output.WriteLine($"batch of {events.Count} answered {(int)response.StatusCode} (retried): {body}");
            retried = true;
            await Task.Delay(TimeSpan.FromSeconds(int.Parse(after.Single(), System.Globalization.CultureInfo.InvariantCulture)));
        }
    }

    private async Task<Dictionary<string, (string? State, long? StartedAt)>> ReadStatesAsync(IReadOnlyList<string> ids)
    {
        var batch = Db.CreateBatch();
        var reads = ids.Select(id => batch.HashGetAsync($"event:{id}", ["state", "startedAt"])).ToList();
        batch.Execute();
        await Task.WhenAll(reads);
        return ids.Zip(reads).ToDictionary(p => p.First, p =>
        {
            var v = p.Second.Result;
            return (v[0].IsNull ? null : v[0].ToString(), v[1].IsNull ? (long?)null : (long)v[1]);
        });
    }
}
