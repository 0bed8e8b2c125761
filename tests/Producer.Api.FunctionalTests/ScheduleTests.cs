using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using EventPipeline.Testing;
using StackExchange.Redis;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// Periodic schedules with two API processes running the scheduler at once, no workers: every tick's event stays in the
/// CPU stream where it can be counted. Each tick must be there exactly once, none skipped, however the schedulers race
/// or die.
/// </summary>
public sealed class ScheduleTests : IAsyncLifetime
{
    private PipelineHost _host = null!;
    private ChildProcess? _secondApi;

    public async Task InitializeAsync() => _host = await PipelineHost.StartAsync();

    public async Task DisposeAsync()
    {
        if (_secondApi is not null)
        {
            await _secondApi.DisposeAsync();
        }

        await _host.DisposeAsync();
    }

    [Fact]
    public async Task Two_schedulers_with_one_killed_fire_each_tick_exactly_once()
    {
        var (second, secondClient) = await StartSecondApiAsync();
        _secondApi = second;
        const string name = "every-second";
        var put = await _host.Admin.PutAsJsonAsync($"/schedules/{name}", new
        {
            cron = "* * * * * *",
            @event = new { type = "noop.cpu", payload = new { from = "schedule" } },
        });
        Assert.Equal(HttpStatusCode.Created, put.StatusCode);
        await using var redis = await _host.Redis.ConnectAsync();
        var db = redis.GetDatabase();

        await Eventually.TrueAsync(async () => (await TickIdsAsync(db, name)).Count >= 8,
            TimeSpan.FromSeconds(60), "8 ticks with both schedulers running", TimeSpan.FromMilliseconds(200));
        await second.KillAsync(); // SIGKILL, mid-way
        await Eventually.TrueAsync(async () => (await TickIdsAsync(db, name)).Count >= 22,
            TimeSpan.FromSeconds(90), "22 ticks in all", TimeSpan.FromMilliseconds(200));
        Assert.Equal(HttpStatusCode.OK, (await _host.Admin.PostAsync($"/schedules/{name}/pause", null)).StatusCode);
        secondClient.Dispose();

        var ids = await TickIdsAsync(db, name);
        var duplicates = ids.GroupBy(i => i).Where(g => g.Count() > 1).Select(g => g.Key).ToList();
        Assert.True(duplicates.Count == 0, $"ticks fired twice: {string.Join(", ", duplicates)}");
        var ticks = ids.Select(i => long.Parse(i[$"sched-{name}-".Length..], System.Globalization.CultureInfo.InvariantCulture)).Order().ToList();
        var gaps = ticks.Zip(ticks.Skip(1)).Where(p => p.Second - p.First != 1000).ToList();
        Assert.True(gaps.Count == 0, $"ticks skipped between: {string.Join(", ", gaps.Select(g => $"{g.First}..{g.Second}"))}");
        foreach (var id in ids)
        {
            var status = await _host.Submit.GetFromJsonAsync<JsonElement>($"/events/{id}");
            Assert.Equal("accepted", status.GetProperty("state").GetString());
        }

        var schedule = await _host.Admin.GetFromJsonAsync<JsonElement>($"/schedules/{name}");
        Assert.True(schedule.GetProperty("paused").GetBoolean());
        Assert.Equal($"sched-{name}-{ticks[^1]}", schedule.GetProperty("lastEventId").GetString());
    }

    /// <summary>The ids of the schedule's tick events in the CPU stream, one per stream entry (a repeat shows twice).</summary>
    private static async Task<List<string>> TickIdsAsync(IDatabase db, string name)
    {
        var entries = await db.StreamRangeAsync("events.cpu");
        return [.. entries.Select(e => e["id"].ToString()).Where(id => id.StartsWith($"sched-{name}-", StringComparison.Ordinal))];
    }

    /// <summary>A second API over the same brokers: a second scheduler.</summary>
    private async Task<(ChildProcess Process, HttpClient Client)> StartSecondApiAsync()
    {
        var settings = new Dictionary<string, string?>
        {
            ["ConnectionStrings__redis"] = _host.Redis.ConnectionString,
            ["ConnectionStrings__rabbitmq"] = _host.Rabbit.ConnectionString,
            ["Auth__ApiKeys__Submit"] = PipelineHost.SubmitKey,
            ["Auth__ApiKeys__Admin"] = PipelineHost.AdminKey,
            ["LaneMonitor__RabbitMqPrometheusUrl"] = $"http://127.0.0.1:{_host.Rabbit.PrometheusPort}",
            ["Logging__LogLevel__Default"] = "Warning",
        };
        var api = ServiceProcess.Start("Producer.Api", settings, out var port);
        await ServiceProcess.WaitUntilReadyAsync(api, port, TimeSpan.FromSeconds(90));
        var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}") };
        return (api, client);
    }
}
