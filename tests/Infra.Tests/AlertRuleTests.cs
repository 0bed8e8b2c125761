using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using EventPipeline.Infra.Tests.Support;

namespace EventPipeline.Infra.Tests;

/// <summary>
/// Every alert rule fires when it should and stays quiet when it should, proven by Prometheus's own rule engine
/// (<c>promtool test rules</c> over infra/prometheus/tests), and every alert leads to its runbook section.
/// </summary>
public partial class AlertRuleTests
{
    private static readonly string RulesFolder = Repo.PathOf("infra", "prometheus", "rules");
    private static readonly string TestsFolder = Repo.PathOf("infra", "prometheus", "tests");

    public static IReadOnlyList<JsonObject> Rules() =>
        [.. Directory.GetFiles(RulesFolder, "*.yml").Order(StringComparer.Ordinal)
            .SelectMany(f => Yaml.ParseDocuments(File.ReadAllText(f)))
            .SelectMany(d => d["groups"]!.AsArray())
            .SelectMany(g => g!["rules"]!.AsArray().Select(r => r!.AsObject()))
            .Where(r => r.ContainsKey("alert"))];

    [Fact]
    public void Every_alert_rule_has_a_promtool_test_that_fires_it_and_one_that_keeps_it_quiet()
    {
        var cases = Directory.GetFiles(TestsFolder, "*.test.yml")
            .SelectMany(f => Yaml.ParseDocuments(File.ReadAllText(f)))
            .SelectMany(d => d["tests"]!.AsArray())
            .SelectMany(t => t!["alert_rule_test"]?.AsArray() ?? [])
            .Select(c => (Alert: (string)c!["alertname"]!, Fires: c["exp_alerts"] is JsonArray { Count: > 0 }))
            .ToList();

        var alerts = Rules().Select(r => (string)r["alert"]!).ToList();
        Assert.NotEmpty(alerts);
        var missing = alerts.SelectMany(a => new[]
            {
                cases.Any(c => c.Alert == a && c.Fires) ? null : $"{a}: no test that makes it fire",
                cases.Any(c => c.Alert == a && !c.Fires) ? null : $"{a}: no test that keeps it quiet",
            })
            .OfType<string>().ToList();
        Assert.True(missing.Count == 0, string.Join("\n", missing));
        Assert.All(cases, c => Assert.Contains(c.Alert, alerts));
    }

    [Fact]
    public void Promtool_unit_tests_of_the_alert_rules_pass()
    {
        var files = Directory.GetFiles(TestsFolder, "*.test.yml");
        Assert.NotEmpty(files);
        var (code, stdout, stderr) = Repo.Run("promtool", TestsFolder, ["test", "rules", .. files.Select(Path.GetFileName).OfType<string>()]);
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains("SUCCESS", stdout + stderr);
    }

    [Fact]
    public void Every_alert_has_a_runbook_url_leading_to_its_section_in_docs_runbooks()
    {
        var anchors = Heading().Matches(Repo.Read("docs", "runbooks.md")).Select(m => m.Groups[1].Value.Trim().ToLowerInvariant()).ToHashSet();
        foreach (var rule in Rules())
        {
            var alert = (string)rule["alert"]!;
            var url = (string?)rule["annotations"]?["runbook_url"];
            Assert.False(url is null, $"{alert} has no runbook_url");
            var anchor = url![(url.IndexOf('#') + 1)..];
            Assert.EndsWith("docs/runbooks.md#" + alert.ToLowerInvariant(), url);
            Assert.True(anchors.Contains(anchor), $"{alert}: docs/runbooks.md has no heading for #{anchor}");
        }
    }

    [Fact]
    public void Lane_gauges_are_never_summed_across_api_replicas_in_rules_or_dashboards()
    {
        // Every API replica exports the same broker-level gauges: a sum multiplies them by the replica count.
        var expressions = Rules().Select(r => ((string)r["alert"]!, (string)r["expr"]!))
            .Concat(Directory.GetFiles(Repo.PathOf("infra", "grafana", "dashboards"), "*.json")
                .SelectMany(f => ExprField().Matches(File.ReadAllText(f)).Select(m => (Path.GetFileName(f), Regex.Unescape(m.Groups[1].Value)))))
            .ToList();
        Assert.Contains(expressions, e => e.Item2.Contains("eventpipeline_lane_", StringComparison.Ordinal));
        foreach (var (where, expr) in expressions)
        {
            foreach (Match use in LaneGauge().Matches(expr))
            {
                var before = expr[..use.Index];
                Assert.True(MaxByLaneOpen().IsMatch(before) || expr.StartsWith("absent(", StringComparison.Ordinal),
                    $"{where}: {use.Value} is not inside max by (lane) (...): {expr}");
            }
        }
    }

    [GeneratedRegex(@"^#{2,3}\s+(\S+)\s*$", RegexOptions.Multiline)]
    private static partial Regex Heading();

    [GeneratedRegex("\"expr\":\\s*\"((?:[^\"\\\\]|\\\\.)*)\"")]
    private static partial Regex ExprField();

    [GeneratedRegex(@"eventpipeline_lane_[a-z_]+")]
    private static partial Regex LaneGauge();

    // The text before a gauge ends in "max by (lane...) (" plus an optional function call such as deriv(.
    [GeneratedRegex(@"max by \(lane[^)]*\) \((?:[a-z_]+\()?$")]
    private static partial Regex MaxByLaneOpen();
}
