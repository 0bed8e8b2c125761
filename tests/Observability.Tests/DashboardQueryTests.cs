using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace EventPipeline.Observability.Tests;

/// <summary>What Grafana and the alerts show is real: every query runs against the Prometheus that scrapes the system.</summary>
[Collection(ObservedAppHostCollection.Name)]
public sealed partial class DashboardQueryTests(ObservedAppHostFixture fixture)
{
    private static readonly TimeSpan QueryDeadline = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Every_dashboard_panel_query_returns_data_while_the_pipeline_processes_failures()
    {
        await fixture.EnsureFailureBurstAsync();

        var queries = GrafanaDashboard.Load().SelectMany(d => d.PanelQueries()).ToList();
        Assert.NotEmpty(queries);
        var failures = new List<string>();
        foreach (var query in queries)
        {
            foreach (var promql in query.Expand(["cpu", "io"]))
            {
                if (IsUnknownForTheIoLane(promql))
                {
                    // RabbitMQ cannot tell when an unacknowledged delivery was made: the API leaves the gauge out.
                    Assert.Empty(await fixture.Prometheus.QueryAsync(promql));
                    continue;
                }

                try
                {
                    await Eventually.ReturnsAsync(() => fixture.Prometheus.QueryAsync(promql), r => r.Count > 0, QueryDeadline, promql, TimeSpan.FromSeconds(1));
                }
                catch (TimeoutException ex)
                {
                    failures.Add($"{query.Dashboard} / {query.Panel}: {promql} ({ex.InnerException?.Message ?? "no data"})");
                }
            }
        }

        Assert.True(failures.Count == 0, "Panels without data:\n" + string.Join("\n", failures));
    }

    private static bool IsUnknownForTheIoLane(string promql) =>
        promql.Contains("eventpipeline_lane_oldest_pending_age_seconds{", StringComparison.Ordinal) && promql.Contains("lane=\"io\"", StringComparison.Ordinal);

    [Fact]
    public async Task Lane_variable_of_the_lane_dashboard_lists_both_lanes()
    {
        var data = await fixture.Prometheus.GetDataAsync("/api/v1/label/lane/values?match[]=eventpipeline_lane_depth", "lane values");
        var lanes = data.EnumerateArray().Select(v => v.GetString()).ToList();
        Assert.Contains("cpu", lanes);
        Assert.Contains("io", lanes);
    }

    [Fact]
    public async Task Dead_letter_panel_shows_what_the_api_reports_while_two_api_replicas_are_scraped()
    {
        var burst = await fixture.EnsureFailureBurstAsync();

        // Both API processes (the AppHost's and the fixture's replica) export the same broker-level gauge.
        await Eventually.ReturnsAsync(() => fixture.Prometheus.QueryAsync("count by (lane) (eventpipeline_lane_dead_letters)"),
            r => r.Count == 2 && r.All(s => s.Last == 2), QueryDeadline, "both API replicas to report the dead-letter gauge of both lanes");

        var panel = GrafanaDashboard.Load().Single(d => d.File == "eventpipeline-overview.json").PanelQueries().Single(q => q.Panel == "Dead-letter depth");
        var promql = Assert.Single(panel.Expand([]));
        foreach (var lane in new[] { "cpu", "io" })
        {
            Assert.Contains(burst, e => e.Lane == lane && e.FinalState == "dead");
            var (inPanel, inApi) = await Eventually.ReturnsAsync<(double, double)>(
                async () => ((await fixture.Prometheus.QueryAsync(promql)).SingleOrDefault(s => s.Label("lane") == lane)?.Last ?? -1,
                             await ApiDeadLettersAsync(lane)),
                values => values.Item1 == values.Item2 && values.Item1 >= burst.Count(e => e.Lane == lane && e.FinalState == "dead"),
                QueryDeadline, $"the dead-letter panel ({promql}) to show the API's dead-letter count of the {lane} lane");
            Assert.Equal(inApi, inPanel);
        }
    }

    [Fact]
    public async Task Every_alert_rule_evaluates_and_watches_series_that_exist()
    {
        await fixture.EnsureFailureBurstAsync();

        var rules = await Eventually.ReturnsAsync(
            async () => (await fixture.Prometheus.GetDataAsync("/api/v1/rules?type=alert", "rules")).GetProperty("groups")
                .EnumerateArray().SelectMany(g => g.GetProperty("rules").EnumerateArray()).ToList(),
            r => r.Count > 0 && r.All(rule => rule.TryGetProperty("lastEvaluation", out var t) && !t.GetString()!.StartsWith("0001", StringComparison.Ordinal)),
            QueryDeadline, "every alert rule to have been evaluated");

        Assert.Equal(AlertRule.Load().Select(r => r.Alert).Order(), rules.Select(r => r.GetProperty("name").GetString()!).Order());
        foreach (var rule in rules)
        {
            var name = rule.GetProperty("name").GetString();
            Assert.True(rule.GetProperty("health").GetString() == "ok", $"{name}: {rule}");
            var expr = rule.GetProperty("query").GetString()!;
            await fixture.Prometheus.QueryAsync(expr); // throws when Prometheus rejects it

            foreach (var metric in MetricName().Matches(expr).Select(m => m.Value).Distinct())
            {
                var series = await Eventually.ReturnsAsync(() => fixture.Prometheus.QueryAsync(metric), r => r.Count > 0, QueryDeadline, metric);
                Assert.Contains(series, s => s.Label("lane") is "cpu" or "io");
            }
        }

        // The burst dead-lettered events on both lanes: the alert's own expression must see that.
        var deadLetters = AlertRule.Load().Single(r => r.Alert == "EventPipelineDeadLettersAppeared");
        var firing = await Eventually.ReturnsAsync(() => fixture.Prometheus.QueryAsync(deadLetters.Expr), r => r.Count == 2, QueryDeadline, deadLetters.Expr);
        Assert.Equal(["cpu", "io"], firing.Select(s => s.Label("lane")).Order());
    }

    private async Task<double> ApiDeadLettersAsync(string lane)
    {
        var lanes = await fixture.Api.GetFromJsonAsync<JsonElement>("/lanes");
        return lanes.GetProperty("lanes").EnumerateArray().Single(l => l.GetProperty("name").GetString() == lane).GetProperty("deadLetters").GetDouble();
    }

    [GeneratedRegex("eventpipeline_[a-z_]+")]
    private static partial Regex MetricName();
}
