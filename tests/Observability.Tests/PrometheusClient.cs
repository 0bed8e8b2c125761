using System.Globalization;
using System.Net.Http.Json;
using System.Text.Json;

namespace EventPipeline.Observability.Tests;

/// <summary>One series of a Prometheus answer: its labels and its (time, value) samples.</summary>
public sealed record PromSeries(IReadOnlyDictionary<string, string> Labels, IReadOnlyList<(DateTimeOffset Time, double Value)> Samples)
{
    public double Last => Samples[^1].Value;

    public string Label(string name) => Labels.GetValueOrDefault(name, "");

    public override string ToString() =>
        "{" + string.Join(",", Labels.Select(l => $"{l.Key}={l.Value}")) + "} " + string.Join(" ", Samples.TakeLast(5).Select(s => s.Value));
}

/// <summary>The Prometheus HTTP API (<c>/api/v1/query</c>, <c>query_range</c>, <c>rules</c>, <c>targets</c>) of the running Prometheus.</summary>
public sealed class PrometheusClient(HttpClient http)
{
    public async Task<IReadOnlyList<PromSeries>> QueryAsync(string promql, DateTimeOffset? at = null)
    {
        var url = $"/api/v1/query?query={Uri.EscapeDataString(promql)}";
        if (at is { } time)
        {
            url += $"&time={time.ToUnixTimeMilliseconds() / 1000.0:F3}";
        }

        return Series(await GetDataAsync(url, promql));
    }

    public async Task<IReadOnlyList<PromSeries>> QueryRangeAsync(string promql, DateTimeOffset start, DateTimeOffset end, TimeSpan step)
    {
        var url = string.Create(CultureInfo.InvariantCulture,
            $"/api/v1/query_range?query={Uri.EscapeDataString(promql)}&start={start.ToUnixTimeSeconds()}&end={end.ToUnixTimeSeconds()}&step={step.TotalSeconds}");
        return Series(await GetDataAsync(url, promql));
    }

    public async Task<JsonElement> GetDataAsync(string url, string what)
    {
        using var response = await http.GetAsync(url);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>();
        if (!response.IsSuccessStatusCode || body.GetProperty("status").GetString() != "success")
        {
            throw new InvalidOperationException($"Prometheus rejected {what}: {body}");
        }

        return body.GetProperty("data");
    }

    private static List<PromSeries> Series(JsonElement data)
    {
        var resultType = data.GetProperty("resultType").GetString();
        var result = data.GetProperty("result");
        if (resultType == "scalar")
        {
            return [new PromSeries(new Dictionary<string, string>(), [Sample(result)])];
        }

        return result.EnumerateArray().Select(series =>
        {
            var labels = series.GetProperty("metric").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString() ?? "");
            var samples = series.TryGetProperty("values", out var values)
                ? values.EnumerateArray().Select(Sample).ToList()
                : [Sample(series.GetProperty("value"))];
            return new PromSeries(labels, samples);
        }).ToList();
    }

    private static (DateTimeOffset, double) Sample(JsonElement pair) =>
        (DateTimeOffset.FromUnixTimeMilliseconds((long)(pair[0].GetDouble() * 1000)),
         pair[1].GetString() switch
         {
             "+Inf" => double.PositiveInfinity,
             "-Inf" => double.NegativeInfinity,
             var text => double.Parse(text!, NumberStyles.Float, CultureInfo.InvariantCulture),
         });
}
