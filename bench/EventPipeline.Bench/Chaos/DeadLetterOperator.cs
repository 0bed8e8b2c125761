using System.Text.Json;

namespace EventPipeline.Bench.Chaos;

/// <summary>
/// An operator with the admin key working the dead letters while clients submit and the nemesis strikes: lists a
/// lane's dead letters, replays one, deletes one, or replays a few at once (seeded). Every action on a tracked event
/// goes into its history; a replayed event must again end <c>succeeded</c> or <c>dead</c>.
/// </summary>
public sealed class DeadLetterOperator(HttpClient http, Func<Uri> api, string adminKey, ChaosHistory history)
{
    private static readonly string[] Lanes = ["cpu", "io"];

    public async Task RunAsync(int seed, CancellationToken stop)
    {
        var random = new Random(seed * 31 + 7);
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(TimeSpan.FromMilliseconds(random.Next(1500, 4000)), stop);
                var lane = Lanes[random.Next(Lanes.Length)];
                var roll = random.NextDouble();
                if (roll < 0.15)
                {
                    var max = random.Next(2, 8);
                    var (status, _) = await SendAsync(HttpMethod.Post, $"/dead-letters/{lane}/replay?max={max}");
                    history.CountAnswer($"operator replay-all {status}");
                    history.Mark($"operator: replay-all {lane} max={max} → {status}");
                    continue;
                }

                var (listed, body) = await SendAsync(HttpMethod.Get, $"/dead-letters/{lane}?limit=20");
                history.CountAnswer($"operator list {listed}");
                if (listed != "200")
                {
                    continue;
                }

                var ids = Ids(body);
                if (ids.Count == 0)
                {
                    continue;
                }

                var id = ids[random.Next(ids.Count)];
                var (verb, method, path) = roll < 0.75
                    ? ("replay", HttpMethod.Post, $"/dead-letters/{lane}/{Uri.EscapeDataString(id)}/replay")
                    : ("delete", HttpMethod.Delete, $"/dead-letters/{lane}/{Uri.EscapeDataString(id)}");
                var (answer, _) = await SendAsync(method, path);
                history.CountAnswer($"operator {verb} {answer}");
                history.Find(id)?.Note(history.Now, $"operator {verb} ({lane}) → {answer}");
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex) when (ex is HttpRequestException or IOException or OperationCanceledException or JsonException)
            {
                history.CountAnswer("operator transport/timeout");
            }
        }
    }

    private async Task<(string Status, string Body)> SendAsync(HttpMethod method, string path)
    {
        using var request = new HttpRequestMessage(method, new Uri(api(), path));
        request.Headers.Add("X-Api-Key", adminKey);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        using var response = await http.SendAsync(request, timeout.Token);
        var status = (int)response.StatusCode;
        var body = await response.Content.ReadAsStringAsync(timeout.Token);
        if (status >= 500 && status != 503)
        {
            // Never expected: a broker that is down is a 503 with Retry-After, anything else is the API's bug.
            history.Mark($"operator {method} {path}: unexpected {status}: {(body.Length > 300 ? body[..300] + "…" : body)}");
        }

        return (status.ToString(System.Globalization.CultureInfo.InvariantCulture), body);
    }

    private static List<string> Ids(string body)
    {
        using var document = JsonDocument.Parse(body);
        return [.. document.RootElement.GetProperty("items").EnumerateArray().Select(i => i.GetProperty("id").GetString()!)];
    }
}
