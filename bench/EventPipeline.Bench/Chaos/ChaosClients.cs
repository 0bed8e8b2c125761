using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;

namespace EventPipeline.Bench.Chaos;

/// <summary>
/// Simulated clients that submit the <see cref="ClientMix"/> and behave as docs/api.md tells a client to: a request with
/// an Idempotency-Key or client-given ids is retried with the same key and the same body on 409, 429, 503, 5xx, a
/// timeout or a broken connection, after the <c>Retry-After</c> it was given, until it gets an answer; an unguarded
/// request is sent once. Every id an answer names (a 202, a 200 repeat, or a 503's <c>heldIds</c>) is tracked.
/// </summary>
public sealed class ChaosClients(HttpClient http, Func<Uri> api, string submitKey, ChaosHistory history, TextWriter log)
{
    private static readonly MediaTypeHeaderValue Json = new("application/json");

    /// <summary>Client-side timeout of one try: the API may take up to two broker timeouts (5 s each) to answer.</summary>
    private static readonly TimeSpan TryTimeout = TimeSpan.FromSeconds(15);

    private int _operations;
    private int _unanswered;

    public int Operations => Volatile.Read(ref _operations);

    /// <summary>Guarded operations that were still unanswered when the clients had to give up (their ids unknown).</summary>
    public int Unanswered => Volatile.Read(ref _unanswered);

    /// <summary>
    /// Runs <paramref name="clients"/> clients until <paramref name="stopNew"/>; operations already started keep retrying
    /// until answered or <paramref name="giveUp"/>.
    /// </summary>
    public Task RunAsync(int clients, int seed, string runTag, CancellationToken stopNew, CancellationToken giveUp)
    {
        var numbers = 0;
        return Task.WhenAll(Enumerable.Range(0, clients).Select(c => Task.Run(async () =>
        {
            var mix = new ClientMix(seed * 1000 + c, runTag);
            var pace = new Random(seed * 1000 + c + 500);
            while (!stopNew.IsCancellationRequested)
            {
                var op = mix.Next(Interlocked.Increment(ref numbers));
                await RunOperationAsync(op, giveUp);
                Interlocked.Increment(ref _operations);
                try
                {
                    await Task.Delay(pace.Next(50, 400), stopNew);
                }
                catch (OperationCanceledException)
                {
                }
            }
        }, CancellationToken.None)));
    }

    private async Task RunOperationAsync(ClientOperation op, CancellationToken giveUp)
    {
        var body = op.Body();
        var keyed = op.Guard switch
        {
            Guard.Key => history.Keyed(op.Key!, op.Events.Count, op.Label),
            Guard.ClientIds => history.Keyed("ids:" + op.Events[0].Id, op.Events.Count, op.Label),
            _ => null,
        };
        var tries = op.SendTwice ? [TryUntilAnsweredAsync(op, body, keyed, 'a', giveUp), TryUntilAnsweredAsync(op, body, keyed, 'b', giveUp)]
            : new[] { TryUntilAnsweredAsync(op, body, keyed, 'a', giveUp) };
        await Task.WhenAll(tries);
    }

    private async Task TryUntilAnsweredAsync(ClientOperation op, byte[] body, KeyedRequest? keyed, char copy, CancellationToken giveUp)
    {
        for (var attempt = 1; ; attempt++)
        {
            var label = $"{op.Label} try {copy}{attempt}";
            var (answer, retryAfter) = await SendOnceAsync(op, body, keyed, label, giveUp);
            history.CountAnswer(answer);
            if (answer is not ("200" or "202" or "503"))
            {
                keyed?.Answered($"{history.Now.TotalSeconds:F1}s {answer} ({label})", []);
            }

            var retry = keyed is not null && answer is "409" or "429" or "503" or "500" or "502" or "504" or "timeout" or "transport";
            if (!retry)
            {
                return;
            }

            if (giveUp.IsCancellationRequested)
            {
                Interlocked.Increment(ref _unanswered);
                log.WriteLine($"[chaos] gave up on {label} (last answer {answer}): ids it may have are unknown");
                return;
            }

            try
            {
                await Task.Delay(retryAfter ?? TimeSpan.FromMilliseconds(Random.Shared.Next(300, 1500)), giveUp);
            }
            catch (OperationCanceledException)
            {
                // One last try after giving up would be a new request racing the end: stop here.
                Interlocked.Increment(ref _unanswered);
                log.WriteLine($"[chaos] gave up on {label} (last answer {answer}): ids it may have are unknown");
                return;
            }
        }
    }

    private async Task<(string Answer, TimeSpan? RetryAfter)> SendOnceAsync(ClientOperation op, byte[] body, KeyedRequest? keyed, string label, CancellationToken giveUp)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(api(), op.Batch ? "/events/batch" : "/events"));
        request.Content = new ByteArrayContent(body);
        request.Content.Headers.ContentType = Json;
        request.Headers.Add("X-Api-Key", submitKey);
        if (op.Key is not null)
        {
            request.Headers.Add("Idempotency-Key", op.Key);
        }

        using var timeout = new CancellationTokenSource(TryTimeout);
        try
        {
            using var response = await http.SendAsync(request, timeout.Token);
            var status = (int)response.StatusCode;
            var text = await response.Content.ReadAsStringAsync(timeout.Token);
            var retryAfter = response.Headers.RetryAfter?.Delta is { } delta ? TimeSpan.FromSeconds(Math.Clamp(delta.TotalSeconds, 0.2, 5)) : (TimeSpan?)null;
            switch (response.StatusCode)
            {
                case HttpStatusCode.Accepted or HttpStatusCode.OK:
                    var ids = AnsweredIds(op, text);
                    for (var i = 0; i < ids.Count; i++)
                    {
                        var planned = op.Events[i];
                        history.Track(ids[i], planned.Type, op.Label, $"{status} to {label}", planned.Chains);
                    }

                    keyed?.Answered($"{history.Now.TotalSeconds:F1}s {status} ({label})", ids);
                    return (status.ToString(System.Globalization.CultureInfo.InvariantCulture), null);
                case HttpStatusCode.ServiceUnavailable:
                    var held = HeldIds(text);
                    foreach (var id in held)
                    {
                        var planned = op.Events.FirstOrDefault(e => e.Id == id);
                        history.Track(id, planned?.Type, op.Label, $"503 heldIds to {label}", planned?.Chains ?? false);
                    }

                    keyed?.Answered($"{history.Now.TotalSeconds:F1}s 503{(held.Count > 0 ? " heldIds" : "")} ({label})", held);

                    return ("503", retryAfter);
                default:
                    if (status is 400 or 422 or 413 or 415 or >= 500)
                    {
                        // Never expected (bad input is the generator's bug; a 5xx other than 503 is the API's).
                        history.Mark($"{label}: unexpected {status}: {Shorten(text)}");
                    }

                    return (status.ToString(System.Globalization.CultureInfo.InvariantCulture), retryAfter);
            }
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested)
        {
            return ("timeout", null);
        }
        catch (HttpRequestException)
        {
            return ("transport", null);
        }
        catch (IOException)
        {
            return ("transport", null);
        }
    }

    private static List<string> AnsweredIds(ClientOperation op, string text)
    {
        using var document = JsonDocument.Parse(text);
        var root = document.RootElement;
        if (!op.Batch)
        {
            return [root.GetProperty("id").GetString()!];
        }

        return [.. root.GetProperty("events").EnumerateArray().Select(e => e.GetProperty("id").GetString()!)];
    }

    private static List<string> HeldIds(string text)
    {
        try
        {
            using var document = JsonDocument.Parse(text);
            return document.RootElement.TryGetProperty("heldIds", out var held) && held.ValueKind == JsonValueKind.Array
                ? [.. held.EnumerateArray().Select(e => e.GetString()!)]
                : [];
        }
        catch (JsonException)
        {
            return [];
        }
    }

    private static string Shorten(string text) => text.Length > 300 ? text[..300] + "…" : text;
}
