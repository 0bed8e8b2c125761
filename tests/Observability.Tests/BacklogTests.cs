using System.Net.Http.Json;
using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Aspire.Hosting.Testing;

namespace EventPipeline.Observability.Tests;

/// <summary>Queue depth and lag in Prometheus follow the real backlog: up while nothing consumes, down once a worker runs.</summary>
[Collection(ObservedAppHostCollection.Name)]
public sealed class BacklogTests(ObservedAppHostFixture fixture)
{
    private const int BacklogSize = 1000;
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task Backlog_of_1000_events_with_the_cpu_worker_stopped_shows_depth_and_lag_rising_then_falling()
    {
        var rules = AlertRules();
        var started = DateTimeOffset.UtcNow;
        await fixture.ExecuteResourceCommandAsync("worker-cpu", KnownResourceCommands.StopCommand);
        try
        {
            using (var stopping = new CancellationTokenSource(Deadline))
            {
                await fixture.App.ResourceNotifications.WaitForResourceAsync("worker-cpu",
                    e => e.Snapshot.State?.Text is not null && e.Snapshot.State.Text != KnownResourceStates.Running && e.Snapshot.State.Text != KnownResourceStates.Stopping,
                    stopping.Token);
            }

            for (var batch = 0; batch < BacklogSize / 100; batch++)
            {
                var events = Enumerable.Range(0, 100).Select(_ => new { type = "noop.cpu", payload = new { } }).ToArray();
                using var response = await fixture.Api.PostAsJsonAsync("/events/batch", new { events });
                Assert.True(response.IsSuccessStatusCode, $"batch {batch} answered {(int)response.StatusCode}");
            }

            await WaitForCpuAsync("eventpipeline_lane_lag", lag => lag >= BacklogSize, $"lag of at least {BacklogSize}");
            await WaitForCpuAsync("eventpipeline_lane_depth", depth => depth >= BacklogSize, $"depth of at least {BacklogSize}");
            // The alerts see it too: lag growing, and (once the stopped consumer's idle time passes the liveness window) no consumer.
            await WaitForCpuAlertAsync(rules["EventPipelineLaneLagGrowing"]);
            await WaitForCpuAlertAsync(rules["EventPipelineNoConsumers"]);
        }
        finally
        {
            await fixture.ExecuteResourceCommandAsync("worker-cpu", KnownResourceCommands.StartCommand);
            using var starting = new CancellationTokenSource(Deadline);
            await fixture.App.ResourceNotifications.WaitForResourceHealthyAsync("worker-cpu", starting.Token);
        }

        await WaitForCpuAsync("eventpipeline_lane_depth", depth => depth == 0, "depth back to 0");
        await WaitForCpuAsync("eventpipeline_lane_lag", lag => lag == 0, "lag back to 0");

        foreach (var gauge in new[] { "eventpipeline_lane_depth", "eventpipeline_lane_lag" })
        {
            // The range ends once Prometheus has stored the fall, not merely once the instant query shows it.
            var series = await Eventually.ReturnsAsync(
                async () => (await fixture.Prometheus.QueryRangeAsync(CpuLane(gauge), started, DateTimeOffset.UtcNow, TimeSpan.FromSeconds(5))).Single(),
                s => s.Samples[^1].Value == 0, Deadline, $"the range of {gauge} to end at 0", TimeSpan.FromSeconds(1));
            var values = series.Samples.Select(s => s.Value).ToList();
            var peak = values.IndexOf(values.Max());
            Assert.True(values[0] < BacklogSize, $"{gauge} should start below the backlog: {string.Join(" ", values)}");
            Assert.True(values[peak] >= BacklogSize, $"{gauge} should reach {BacklogSize}: {string.Join(" ", values)}");
            Assert.True(peak > 0 && values[^1] == 0, $"{gauge} should rise, then fall back to 0: {string.Join(" ", values)}");
        }

        var minutes = (int)Math.Ceiling((DateTimeOffset.UtcNow - started).TotalMinutes) + 1;
        await Browser.ScreenshotPrometheusGraphAsync(
            fixture.App.GetEndpoint("prometheus", "http"), "{__name__=~\"eventpipeline_lane_(depth|lag)\",lane=\"cpu\"}", $"{minutes}m", "prometheus-backlog-depth-lag.png");
    }

    /// <summary>The CPU lane's value of a lane gauge as the dashboards show it: every API replica exports it.</summary>
    private static string CpuLane(string gauge) => $"max by (lane) ({gauge}{{lane=\"cpu\"}})";

    private async Task WaitForCpuAsync(string gauge, Func<double, bool> condition, string what) =>
        await Eventually.ReturnsAsync(
            async () => (await fixture.Prometheus.QueryAsync(CpuLane(gauge))).SingleOrDefault()?.Last ?? double.NaN,
            condition, Deadline, $"Prometheus to show a CPU lane {what}", TimeSpan.FromSeconds(1));

    private async Task WaitForCpuAlertAsync(string expr) =>
        await Eventually.ReturnsAsync(
            () => fixture.Prometheus.QueryAsync(expr),
            result => result.Any(s => s.Label("lane") == "cpu"),
            Deadline, $"the alert expression {expr} to return the CPU lane", TimeSpan.FromSeconds(1));

    private static Dictionary<string, string> AlertRules() => AlertRule.Load().ToDictionary(r => r.Alert, r => r.Expr);
}
