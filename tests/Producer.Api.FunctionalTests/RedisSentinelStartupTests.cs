using System.Net;
using System.Net.Http.Json;
using EventPipeline.Testing;
using Xunit.Abstractions;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// An API that starts while the Sentinels in front of its Redis do not answer (SIGSTOPped, always resumed): it must come
/// up, answer 503 for what needs Redis without holding or writing anything, and serve once they answer — without a
/// restart. Aspire's client connects synchronously the first time the connection is resolved (at host start, by the
/// hosted services), and StackExchange.Redis's Sentinel connect throws when no Sentinel answered ("Detected as:
/// Standalone"): the host failed to start and the process exited.
/// </summary>
[Collection(ApiOnlyCollection.Name)]
public sealed class RedisSentinelStartupTests(ApiOnlyFixture fixture, ITestOutputHelper output)
{
    private PipelineHost Host => fixture.Host;

    [Fact]
    public async Task Api_started_while_its_sentinel_does_not_answer_stays_up_answers_503_and_serves_once_it_does()
    {
        // One Sentinel watching the fixture's Redis (quorum 1): the discovery path the cluster AppHost's services take.
        await using var sentinel = await LoneSentinel.StartAsync(Host.Redis, "ep-api");
        // A short connect timeout only so that attempts fail quickly; the failure is the same at the defaults.
        var settings = ApiSettings(sentinel.ConnectionString + ",connectTimeout=1000,connectRetry=1");
        var before = await Host.ContentsAsync();
        await using var pause = ProcessPause.Of(sentinel.Pid);
        await using var api = ServiceProcess.Start("Producer.Api", settings, out var port);
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(30) };
        http.DefaultRequestHeaders.Add("X-Api-Key", PipelineHost.SubmitKey);

        await Eventually.TrueAsync(async () => api.HasExited || await LiveAsync(http), TimeSpan.FromSeconds(90),
            "the API to answer /health/live or to exit", TimeSpan.FromMilliseconds(200));
        Assert.False(api.HasExited, $"the API exited at start while its Sentinel did not answer:\n{string.Join('\n', api.Output.Where(l => !l.StartsWith("   ", StringComparison.Ordinal)).TakeLast(10))}");

        // Twice: the second request must not find a half-made connection the first one left behind.
        for (var i = 0; i < 2; i++)
        {
            using var submitted = await http.PostAsJsonAsync("/events", new { type = "noop.cpu", payload = new { } });
            Assert.Equal(HttpStatusCode.ServiceUnavailable, submitted.StatusCode);
            Assert.NotNull(submitted.Headers.RetryAfter);
            using var read = await http.GetAsync("/events/not-there");
            Assert.Equal(HttpStatusCode.ServiceUnavailable, read.StatusCode);
        }

        using (var ready = await http.GetAsync("/health/ready"))
        {
            Assert.NotEqual(HttpStatusCode.OK, ready.StatusCode);
        }

        Assert.Equal(before.CpuStreamLength, (await Host.ContentsAsync()).CpuStreamLength);

        pause.Resume();
        var id = Guid.NewGuid().ToString("N");
        await Eventually.TrueAsync(async () =>
        {
            using var submitted = await http.PostAsJsonAsync("/events", new { id, type = "noop.cpu", payload = new { } });
            return submitted.StatusCode == HttpStatusCode.Accepted;
        }, TimeSpan.FromSeconds(60), "the API to accept an event once its Sentinel answers", TimeSpan.FromMilliseconds(250));
        using var status = await http.GetAsync($"/events/{id}");
        Assert.Equal(HttpStatusCode.OK, status.StatusCode);
        await Eventually.TrueAsync(async () => (await http.GetAsync("/health/ready")).StatusCode == HttpStatusCode.OK, TimeSpan.FromSeconds(60),
            "the API to be ready once its Sentinel answers", TimeSpan.FromMilliseconds(250));
        output.WriteLine(string.Join('\n', api.Output.Where(l => l.Contains("through Sentinel", StringComparison.Ordinal)).Take(10)));
    }

    [Fact]
    public async Task Api_whose_sentinel_names_a_primary_that_does_not_answer_is_not_ready_while_only_a_replica_answers()
    {
        // The primary killed and a replica up, the Sentinel still naming the primary (it cannot fail over here): what an
        // API starting between a primary's death and the promotion of a replica meets. A replica takes no write, so the
        // connection must not count as made (nor the API as ready) until a primary answers.
        await using var set = await LoneSentinelWithReplica.StartAsync("ep-api");
        await set.Primary.KillAsync();
        var settings = ApiSettings(set.ConnectionString + ",connectTimeout=1000,connectRetry=1");
        // For the "connected" line.
        settings["Logging__LogLevel__EventPipeline"] = "Information";
        await using var api = ServiceProcess.Start("Producer.Api", settings, out var port);
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(30) };
        http.DefaultRequestHeaders.Add("X-Api-Key", PipelineHost.SubmitKey);

        await Eventually.TrueAsync(() => Task.FromResult(api.HasExited || Connected(api) || FailedAttempts(api) >= 2), TimeSpan.FromSeconds(90),
            "the API to connect to Redis or to report two failed connects", TimeSpan.FromMilliseconds(200));
        output.WriteLine(string.Join('\n', api.Output.Where(l => l.Contains("not reachable through Sentinel", StringComparison.Ordinal) || l.Contains("Redis connected through", StringComparison.Ordinal) || l.Contains("no primary of service", StringComparison.Ordinal)).Take(6)));
        Assert.False(api.HasExited, "the API exited:\n" + string.Join('\n', api.Output.TakeLast(10)));
        Assert.False(Connected(api),
            "the API counted Redis as connected while the primary the Sentinel names did not answer and only a replica did:\n" + string.Join('\n', api.Output.TakeLast(10)));
        // Refused because only the replica answered (not for another failure that would hide the check).
        var replicaOnly = $"no primary of service ep-api answers, only its replica(s) 127.0.0.1:{set.ReplicaPort}";
        Assert.True(api.Output.Any(l => l.Contains(replicaOnly, StringComparison.Ordinal)),
            $"the API never logged '{replicaOnly}':\n" + string.Join('\n', api.Output.TakeLast(10)));
        using (var ready = await http.GetAsync("/health/ready"))
        {
            Assert.NotEqual(HttpStatusCode.OK, ready.StatusCode);
        }

        // The primary back on its address: the API connects to it and accepts events without a restart.
        await set.Primary.StartProcessAsync();
        await Eventually.TrueAsync(async () =>
        {
            using var submitted = await http.PostAsJsonAsync("/events", new { type = "noop.cpu", payload = new { } });
            return submitted.StatusCode == HttpStatusCode.Accepted;
        }, TimeSpan.FromSeconds(60), "the API to accept an event once the primary answers", TimeSpan.FromMilliseconds(250));
        Assert.True(Connected(api), "the API accepted an event without logging its Redis connection made");
    }

    private static bool Connected(ChildProcess api) =>
        api.Output.Any(l => l.Contains("Redis connected through Sentinel", StringComparison.Ordinal));

    private static int FailedAttempts(ChildProcess api) =>
        api.Output.Count(l => l.Contains("not reachable through Sentinel", StringComparison.Ordinal));

    private Dictionary<string, string?> ApiSettings(string redis) => new()
    {
        ["ConnectionStrings__redis"] = redis,
        ["ConnectionStrings__rabbitmq"] = Host.Rabbit.ConnectionString,
        ["TestEvents__Enabled"] = "true",
        ["Logging__LogLevel__Default"] = "Warning",
        ["Auth__ApiKeys__Submit"] = PipelineHost.SubmitKey,
        ["Auth__ApiKeys__Admin"] = PipelineHost.AdminKey,
        ["LaneMonitor__RabbitMqPrometheusUrl"] = $"http://127.0.0.1:{Host.Rabbit.PrometheusPort}",
        ["Downstream__AllowedHosts__0"] = "127.0.0.1",
    };

    private static async Task<bool> LiveAsync(HttpClient http)
    {
        try
        {
            return (await http.GetAsync("/health/live")).StatusCode == HttpStatusCode.OK;
        }
        catch (HttpRequestException)
        {
            return false;
        }
    }
}
