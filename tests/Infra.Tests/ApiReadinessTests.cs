using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using EventPipeline.Infra.Tests.Support;
using EventPipeline.Testing;

namespace EventPipeline.Infra.Tests;

/// <summary>
/// The API's readiness probe keeps the pod in its Service while the process can answer: with a broker down a client
/// gets the API's documented 503 with Retry-After, not the ingress's error for a Service without ready endpoints.
/// Run against the real Producer.Api and real brokers, with the probe path the manifests give it.
/// </summary>
public class ApiReadinessTests
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Api_readiness_probe_stays_ready_while_redis_is_down_and_the_api_answers_503_with_retry_after()
    {
        var api = Manifests.Render("overlays/prod").Workload("producer-api");
        var readinessPath = (string)api.MainContainer["readinessProbe"]!["httpGet"]!["path"]!;

        await using var redis = await RedisServer.StartAsync();
        await using var rabbit = await RabbitMqServer.StartAsync();
        var submitKey = "submit-" + Guid.NewGuid().ToString("N");
        await using var process = ServiceProcess.Start("Producer.Api", new Dictionary<string, string?>
        {
            ["ConnectionStrings__redis"] = redis.ConnectionString,
            ["ConnectionStrings__rabbitmq"] = rabbit.ConnectionString,
            ["Auth__ApiKeys__Submit"] = submitKey,
            ["Auth__ApiKeys__Admin"] = "admin-" + Guid.NewGuid().ToString("N"),
            ["LaneMonitor__RabbitMqPrometheusUrl"] = $"http://127.0.0.1:{rabbit.PrometheusPort}",
            ["Logging__LogLevel__Default"] = "Warning",
        }, out var port);
        await ServiceProcess.WaitUntilReadyAsync(process, port, Deadline);
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(20) };
        http.DefaultRequestHeaders.Add("X-Api-Key", submitKey);

        await redis.KillAsync();
        // The outage is visible to the broker health checks...
        await Eventually.TrueAsync(async () => (await http.GetAsync("/health/ready")).StatusCode == HttpStatusCode.ServiceUnavailable,
            Deadline, "/health/ready to report Redis down", TimeSpan.FromMilliseconds(250));

        // ...but the probe Kubernetes uses for the API keeps the pod ready, because the API still answers:
        using (var probe = await http.GetAsync(readinessPath))
        {
            Assert.True(probe.StatusCode == HttpStatusCode.OK,
                $"readiness probe {readinessPath} answered {(int)probe.StatusCode} with Redis down: Kubernetes would take every API pod out of the Service");
        }

        using var submit = await http.PostAsJsonAsync("/events", new { type = "hash.pbkdf2", payload = new { data = "probe", iterations = 1000 } });
        Assert.Equal(HttpStatusCode.ServiceUnavailable, submit.StatusCode);
        Assert.True(int.Parse(submit.Headers.GetValues("Retry-After").Single(), System.Globalization.CultureInfo.InvariantCulture) > 0);
        var problem = await submit.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal("https://eventpipeline.dev/problems/broker-unavailable", problem.GetProperty("type").GetString());
    }
}
