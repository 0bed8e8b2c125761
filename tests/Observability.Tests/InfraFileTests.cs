using System.Diagnostics;
using System.Text.Json;

namespace EventPipeline.Observability.Tests;

/// <summary>The Grafana and Prometheus files are well-formed, checked without the running system.</summary>
public sealed class InfraFileTests
{
    /// <summary>Grafana unit ids the dashboards may use (Grafana falls back to raw numbers for an unknown id).</summary>
    private static readonly HashSet<string> KnownUnits = ["short", "none", "ops", "reqps", "s", "ms", "percentunit", "percent", "bytes"];

    /// <summary>What Grafana substitutes for the datasource: the import input, or the datasource variable when provisioned.</summary>
    private const string DatasourceVariable = "${DS_PROMETHEUS}";

    [Fact]
    public void Dashboards_take_their_datasource_as_a_variable_and_have_unique_panel_ids_and_known_units()
    {
        // Provisioned, the DS_PROMETHEUS variable picks the default Prometheus datasource: the provisioned one must be it.
        var datasource = File.ReadAllText(Repository.PathOf("infra", "grafana", "provisioning", "datasources", "prometheus.yml"));
        Assert.Matches(@"isDefault:\s*true", datasource);

        var dashboards = GrafanaDashboard.Load();
        Assert.Contains(dashboards, d => d.File == "eventpipeline-overview.json");
        Assert.Contains(dashboards, d => d.File == "eventpipeline-lane.json");
        Assert.Equal(dashboards.Count, dashboards.Select(d => d.Json.GetProperty("uid").GetString()).Distinct().Count());
        foreach (var dashboard in dashboards)
        {
            // Imported through Grafana's UI, __inputs asks which Prometheus to use and replaces ${DS_PROMETHEUS} with it.
            var input = Assert.Single(dashboard.Json.GetProperty("__inputs").EnumerateArray());
            Assert.Equal("DS_PROMETHEUS", input.GetProperty("name").GetString());
            Assert.Equal("datasource", input.GetProperty("type").GetString());
            Assert.Equal("prometheus", input.GetProperty("pluginId").GetString());

            var variables = dashboard.Json.GetProperty("templating").GetProperty("list").EnumerateArray().ToList();
            var dsVariable = Assert.Single(variables, v => v.GetProperty("name").GetString() == "DS_PROMETHEUS");
            Assert.Equal("datasource", dsVariable.GetProperty("type").GetString());
            Assert.Equal("prometheus", dsVariable.GetProperty("query").GetString());
            var namespaceVariable = Assert.Single(variables, v => v.GetProperty("name").GetString() == "namespace");
            Assert.True(namespaceVariable.GetProperty("includeAll").GetBoolean(), $"{dashboard.File}: namespace variable without All");
            Assert.Equal(".*", namespaceVariable.GetProperty("allValue").GetString());
            foreach (var variable in variables.Where(v => v.GetProperty("type").GetString() == "query"))
            {
                Assert.Equal(DatasourceVariable, variable.GetProperty("datasource").GetProperty("uid").GetString());
            }

            var panels = dashboard.Panels().ToList();
            Assert.NotEmpty(panels);
            var ids = panels.Select(p => p.GetProperty("id").GetInt32()).ToList();
            Assert.True(ids.Count == ids.Distinct().Count(), $"{dashboard.File}: panel ids repeat: {string.Join(",", ids)}");
            foreach (var panel in panels.Where(p => p.GetProperty("type").GetString() != "row"))
            {
                var title = panel.GetProperty("title").GetString();
                Assert.Equal(DatasourceVariable, panel.GetProperty("datasource").GetProperty("uid").GetString());
                var defaults = panel.GetProperty("fieldConfig").GetProperty("defaults");
                var unit = defaults.GetProperty("unit").GetString()!;
                Assert.True(KnownUnits.Contains(unit), $"{dashboard.File} / {title}: unknown unit '{unit}'");
                if (panel.GetProperty("type").GetString() == "stat")
                {
                    // A stat panel without thresholds shows a bad value in the same colour as a good one.
                    Assert.True(defaults.TryGetProperty("thresholds", out var thresholds), $"{dashboard.File} / {title}: stat panel without thresholds");
                    Assert.True(thresholds.GetProperty("steps").GetArrayLength() >= 2, $"{dashboard.File} / {title}: a single threshold step");
                    Assert.Equal("thresholds", defaults.GetProperty("color").GetProperty("mode").GetString());
                }

                var grid = panel.GetProperty("gridPos");
                Assert.InRange(grid.GetProperty("x").GetInt32() + grid.GetProperty("w").GetInt32(), 1, 24);
                var targets = panel.GetProperty("targets").EnumerateArray().ToList();
                Assert.NotEmpty(targets);
                Assert.All(targets, t =>
                {
                    Assert.Equal(DatasourceVariable, t.GetProperty("datasource").GetProperty("uid").GetString());
                    var expr = t.GetProperty("expr").GetString();
                    Assert.False(string.IsNullOrWhiteSpace(expr), $"{title}: empty query");
                    Assert.True(expr!.Contains("namespace=~\"$namespace\"", StringComparison.Ordinal), $"{title}: query ignores $namespace: {expr}");
                });
                Assert.Equal(targets.Count, targets.Select(t => t.GetProperty("refId").GetString()).Distinct().Count());
            }
        }
    }

    [Fact]
    public void Overview_dashboard_covers_throughput_failures_retries_dead_letters_depth_lag_age_and_latency()
    {
        var overview = GrafanaDashboard.Load().Single(d => d.File == "eventpipeline-overview.json");
        var queries = string.Join("\n", overview.PanelQueries().Select(q => q.Expr));
        foreach (var needed in new[]
        {
            "eventpipeline_events_accepted_total", "eventpipeline_events_processed_total", "outcome=\"dead\"", "outcome=\"retried\"",
            "eventpipeline_lane_dead_letters", "eventpipeline_lane_depth", "eventpipeline_lane_lag",
            "eventpipeline_lane_oldest_pending_age_seconds", "histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,",
        })
        {
            Assert.Contains(needed, queries);
        }
    }

    [Fact]
    public async Task Promtool_accepts_the_prometheus_config_and_alert_rules()
    {
        var config = await RunAsync("promtool", "check", "config", Repository.PathOf("infra", "prometheus", "prometheus.yml"));
        Assert.True(config.ExitCode == 0, config.Output);
        Assert.Contains("SUCCESS", config.Output);

        var rules = await RunAsync("promtool", ["check", "rules", .. Directory.GetFiles(Repository.PathOf("infra", "prometheus", "rules"), "*.yml")]);
        Assert.True(rules.ExitCode == 0, rules.Output);
        Assert.Contains($"SUCCESS: {AlertRule.Load().Count} rules found", rules.Output);
    }

    [Theory]
    [InlineData("grafana", new[] { "grafana-datasources", "grafana-dashboard-providers", "grafana-dashboards" })]
    [InlineData("prometheus", new[] { "prometheus-config", "prometheus-rules" })]
    public async Task Kustomization_generates_configmaps_from_the_shared_files(string folder, string[] configMaps)
    {
        var rendered = await RunAsync("kubectl", "kustomize", Repository.PathOf("infra", folder));
        Assert.True(rendered.ExitCode == 0, rendered.Output);
        foreach (var name in configMaps)
        {
            Assert.Matches($"name: {name}-[a-z0-9]+", rendered.Output);
        }

        if (folder == "grafana")
        {
            Assert.Contains("eventpipeline-overview.json", rendered.Output);
            Assert.Contains("eventpipeline-lane.json", rendered.Output);
        }
        else
        {
            Assert.Contains("eventpipeline-alerts.yml", rendered.Output);
        }
    }

    private static async Task<(int ExitCode, string Output)> RunAsync(string fileName, params string[] arguments)
    {
        var start = new ProcessStartInfo(fileName) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        return (process.ExitCode, await stdout + await stderr);
    }
}
