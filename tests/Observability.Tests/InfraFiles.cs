using System.Text.Json;
using System.Text.RegularExpressions;

namespace EventPipeline.Observability.Tests;

/// <summary>One query of one dashboard panel, with Grafana's variables still in it.</summary>
public sealed record PanelQuery(string Dashboard, string Panel, string Expr)
{
    /// <summary>
    /// The PromQL Grafana would send: <c>$lane</c> once per lane, <c>$namespace</c> as its "All" value (<c>.*</c>, which
    /// also matches series without the label, as the AppHost's Prometheus has them), the interval variables as Grafana fills them.
    /// </summary>
    public IEnumerable<string> Expand(IEnumerable<string> lanes)
    {
        var expr = Expr.Replace("$__rate_interval", "1m").Replace("$__interval", "5s").Replace("$__range", "5m").Replace("$namespace", ".*");
        return expr.Contains("$lane", StringComparison.Ordinal) ? lanes.Select(l => expr.Replace("$lane", l)) : [expr];
    }
}

/// <summary>The dashboards under infra/grafana/dashboards as Grafana loads them.</summary>
public sealed record GrafanaDashboard(string File, JsonElement Json)
{
    public string Title => Json.GetProperty("title").GetString()!;

    public static IReadOnlyList<GrafanaDashboard> Load() =>
        Directory.GetFiles(Repository.PathOf("infra", "grafana", "dashboards"), "*.json").Order()
            .Select(f => new GrafanaDashboard(Path.GetFileName(f), JsonDocument.Parse(System.IO.File.ReadAllText(f)).RootElement.Clone()))
            .ToList();

    public IEnumerable<JsonElement> Panels() =>
        Json.GetProperty("panels").EnumerateArray()
            .SelectMany(p => p.TryGetProperty("panels", out var nested) ? nested.EnumerateArray().Prepend(p) : [p]);

    public IEnumerable<PanelQuery> PanelQueries() =>
        Panels().Where(p => p.TryGetProperty("targets", out _))
            .SelectMany(p => p.GetProperty("targets").EnumerateArray()
                .Select(t => new PanelQuery(Title, p.GetProperty("title").GetString()!, t.GetProperty("expr").GetString()!)));
}

/// <summary>The alert rules under infra/prometheus/rules (one-line <c>expr</c>s, as the files keep them).</summary>
public sealed partial record AlertRule(string File, string Alert, string Expr)
{
    public static IReadOnlyList<AlertRule> Load() =>
        Directory.GetFiles(Repository.PathOf("infra", "prometheus", "rules"), "*.yml").Order()
            .SelectMany(file => AlertAndExpr().Matches(System.IO.File.ReadAllText(file))
                .Select(m => new AlertRule(Path.GetFileName(file), m.Groups["alert"].Value, m.Groups["expr"].Value.Trim())))
            .ToList();

    [GeneratedRegex(@"- alert: (?<alert>\S+)\s*\n(?:\s*#[^\n]*\n)*\s*expr: (?<expr>[^\n]+)")]
    private static partial Regex AlertAndExpr();
}
