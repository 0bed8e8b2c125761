using System.Text.RegularExpressions;
using System.Net;

namespace EventPipeline.Observability.Tests;

[Collection(ObservedAppHostCollection.Name)]
public sealed partial class MetricsExportTests(ObservedAppHostFixture fixture)
{
    [Fact]
    public async Task Every_service_answers_health_live_ready_and_a_prometheus_scrape()
    {
        foreach (var service in ObservedAppHostFixture.Services)
        {
            using var http = fixture.CreateClient(service);
            foreach (var path in new[] { "/health/live", "/health/ready", "/metrics" })
            {
                using var response = await http.GetAsync(path);
                Assert.True(response.StatusCode == HttpStatusCode.OK, $"{service}{path} answered {(int)response.StatusCode}");
            }

            var metrics = await http.GetStringAsync("/metrics");
            Assert.Contains("# TYPE ", metrics);
        }
    }

    [Fact]
    public async Task Pipeline_meter_is_exported_under_its_documented_prometheus_names()
    {
        var cpu = await fixture.SubmitAsync("noop.cpu", new { });
        var io = await fixture.SubmitAsync("noop.io", new { });
        await fixture.WaitForStateAsync(cpu, "succeeded");
        await fixture.WaitForStateAsync(io, "succeeded");

        using var apiHttp = fixture.CreateClient("producer-api");
        // The exporter serves a scrape from a short-lived cache, so the first read may predate these events.
        // The lane gauges come from a background sample taken every second; the I/O lane's pending count needs RabbitMQ's
        // Prometheus plugin to answer in time, so wait for a scrape that has every gauge rather than judging the first one.
        string[] gauges = ["depth", "lag", "pending", "oldest_pending_age_seconds", "dead_letters", "consumers"];
        bool Has(string text, string gauge, string lane) => Regex.IsMatch(text, $"eventpipeline_lane_{gauge}\\{{[^}}]*lane=\"{lane}\"");
        var api = await Eventually.ReturnsAsync(() => apiHttp.GetStringAsync("/metrics"),
            text => AcceptedNoopCpu().IsMatch(text)
                    && gauges.All(g => Has(text, g, "cpu"))
                    && gauges.Where(g => g != "oldest_pending_age_seconds").All(g => Has(text, g, "io")),
            TimeSpan.FromSeconds(60), "the API's /metrics with the accepted counter of noop.cpu and every lane gauge");
        foreach (var gauge in gauges)
        {
            Assert.True(Has(api, gauge, "cpu"), $"eventpipeline_lane_{gauge} for the cpu lane");
            // RabbitMQ does not record when an unacknowledged delivery was made: unknown is left out, never shown as 0.
            Assert.Equal(gauge != "oldest_pending_age_seconds", Has(api, gauge, "io"));
        }

        foreach (var worker in new[] { "worker-cpu", "worker-io" })
        {
            using var http = fixture.CreateClient(worker);
            var text = await Eventually.ReturnsAsync(() => http.GetStringAsync("/metrics"),
                t => t.Contains("eventpipeline_events_processed_total{", StringComparison.Ordinal), TimeSpan.FromSeconds(30), $"{worker}'s processed counter");
            Assert.Matches("eventpipeline_events_processed_total\\{[^}]*outcome=\"succeeded\"", text);
            Assert.Contains("eventpipeline_handler_duration_seconds_bucket{", text);
            Assert.Contains("eventpipeline_event_latency_seconds_bucket{", text);
            // Only the API reports the lanes, so a sum over services counts each lane once.
            Assert.DoesNotContain("eventpipeline_lane_depth", text);
        }
    }

    /// <summary>
    /// MassTransit's own meter (about ten measurements per consumed message) is not exported unless
    /// <c>Telemetry:MassTransitMetrics</c> asks for it: no dashboard panel or alert reads it, and Worker.Io pays for every
    /// measurement it records. The pipeline's own counters stay.
    /// </summary>
    [Fact]
    public async Task Worker_io_does_not_export_masstransits_meter_by_default()
    {
        var id = await fixture.SubmitAsync("noop.io", new { });
        await fixture.WaitForStateAsync(id, "succeeded");

        using var http = fixture.CreateClient("worker-io");
        // The exporter serves a scrape from a short-lived cache: wait for one that has counted a consumed message.
        var text = await Eventually.ReturnsAsync(() => http.GetStringAsync("/metrics"),
            t => Regex.IsMatch(t, "eventpipeline_events_processed_total\\{[^}]*outcome=\"succeeded\""), TimeSpan.FromSeconds(30),
            "worker-io's processed counter");
        Assert.DoesNotContain("messaging_masstransit_", text);
    }

    [Fact]
    public async Task Prometheus_scrapes_every_service_rabbitmq_and_the_redis_exporter()
    {
        var expected = ObservedAppHostFixture.Services.Select(s => ("eventpipeline", s))
            .Concat([("rabbitmq", "rabbitmq"), ("rabbitmq-queues", "rabbitmq"), ("redis", "redis")])
            .ToList();

        var up = await Eventually.ReturnsAsync(
            () => fixture.Prometheus.QueryAsync("up == 1"),
            series => expected.All(e => series.Any(s => s.Label("job") == e.Item1 && s.Label("service") == e.Item2)),
            TimeSpan.FromSeconds(60),
            "every target to be up");

        Assert.All(expected, e => Assert.Contains(up, s => s.Label("job") == e.Item1 && s.Label("service") == e.Item2));
    }

    [System.Text.RegularExpressions.GeneratedRegex("eventpipeline_events_accepted_total\\{[^}]*lane=\"cpu\"[^}]*type=\"noop.cpu\"")]
    private static partial System.Text.RegularExpressions.Regex AcceptedNoopCpu();
}
