using System.Diagnostics;
using System.Net.Http.Headers;
using EventPipeline.Bench.Workloads;

namespace EventPipeline.Bench.Load;

/// <summary>What the client saw while submitting.</summary>
public sealed class SubmitOutcome(int count)
{
    /// <summary>accepted[i]: event i was answered 202.</summary>
    public bool[] Accepted { get; } = new bool[count];

    /// <summary>Non-202 answers (or transport errors, as status 0) by status code, counted per event.</summary>
    public Dictionary<int, int> Rejected { get; } = [];

    public int Requests { get; set; }

    /// <summary>From the first request sent to the last answer received.</summary>
    public TimeSpan Elapsed { get; set; }

    public DateTimeOffset StartedAt { get; set; }

    public int AcceptedCount => Accepted.Count(a => a);

    public void Reject(int status, int events)
    {
        lock (Rejected)
        {
            Rejected[status] = Rejected.GetValueOrDefault(status) + events;
        }
    }
}

/// <summary>
/// Sends events as <c>POST /events</c> (batch 1) or <c>POST /events/batch</c> over a fixed number of connections. Bodies
/// are built before the clock starts, so the client's own JSON work is not in the measurement. Every answer's status is
/// checked: only a 202 marks its events accepted. The client shares the cores with the system it measures, so the
/// per-request path is kept lean (docs/benchmarks-history.md, "Session 6: bench client"): the request URIs are parsed once, and
/// the answer is not buffered (the status line decides; the connection still reads and discards the small body before
/// it is reused).
/// </summary>
public sealed class Submitter(HttpClient api, Workload workload, int connections)
{
    private static readonly MediaTypeHeaderValue Json = new("application/json");
    private readonly Uri _single = new(api.BaseAddress!, "/events");
    private readonly Uri _batch = new(api.BaseAddress!, "/events/batch");
    private int _submitted;

    /// <summary>Events whose request has been answered (for the progress line).</summary>
    public int Submitted => Volatile.Read(ref _submitted);

    /// <summary>The request bodies for events <paramref name="ids"/>, <paramref name="batch"/> at a time.</summary>
    public IReadOnlyList<(int First, int Count, byte[] Body)> Prepare(IReadOnlyList<string> ids, int batch)
    {
        var requests = new List<(int, int, byte[])>((ids.Count + batch - 1) / batch);
        for (var first = 0; first < ids.Count; first += batch)
        {
            var count = Math.Min(batch, ids.Count - first);
            if (batch == 1)
            {
                requests.Add((first, 1, workload.EventJson(ids[first])));
                continue;
            }

            using var body = new MemoryStream(count * (Workload.EventBytes + 1) + 16);
            body.Write("{\"events\":["u8);
            for (var i = 0; i < count; i++)
            {
                if (i > 0)
                {
                    body.WriteByte((byte)',');
                }

                body.Write(workload.EventJson(ids[first + i]));
            }

            body.Write("]}"u8);
            requests.Add((first, count, body.ToArray()));
        }

        return requests;
    }

    /// <summary>Everything at once: <paramref name="connections"/> senders take the next request until none is left.</summary>
    public async Task<SubmitOutcome> BurstAsync(IReadOnlyList<(int First, int Count, byte[] Body)> requests, int events, CancellationToken cancellationToken)
    {
        var outcome = new SubmitOutcome(events) { StartedAt = DateTimeOffset.UtcNow, Requests = requests.Count };
        var clock = Stopwatch.StartNew();
        var next = -1;
        var senders = Enumerable.Range(0, connections).Select(_ => Task.Run(async () =>
        {
            int index;
            while ((index = Interlocked.Increment(ref next)) < requests.Count)
            {
                await SendAsync(requests[index], outcome, cancellationToken);
            }
        }, cancellationToken));
        await Task.WhenAll(senders);
        outcome.Elapsed = clock.Elapsed;
        return outcome;
    }

    /// <summary>
    /// An open-loop steady rate: request i is sent at start + i / rate whether or not earlier ones were answered (up
    /// to <paramref name="connections"/> in flight), so a slow answer shows as latency, not as a lower offered rate.
    /// </summary>
    public async Task<SubmitOutcome> SteadyAsync(IReadOnlyList<(int First, int Count, byte[] Body)> requests, int events, double requestsPerSecond, CancellationToken cancellationToken)
    {
        var outcome = new SubmitOutcome(events) { StartedAt = DateTimeOffset.UtcNow, Requests = requests.Count };
        using var inFlight = new SemaphoreSlim(Math.Max(connections, 1));
        var clock = Stopwatch.StartNew();
        var pending = new List<Task>(requests.Count);
        for (var i = 0; i < requests.Count; i++)
        {
            var due = TimeSpan.FromSeconds(i / requestsPerSecond);
            var wait = due - clock.Elapsed;
            if (wait > TimeSpan.FromMilliseconds(1))
            {
                await Task.Delay(wait, cancellationToken);
            }

            await inFlight.WaitAsync(cancellationToken);
            var request = requests[i];
            pending.Add(Task.Run(async () =>
            {
                try
                {
                    await SendAsync(request, outcome, cancellationToken);
                }
                finally
                {
                    inFlight.Release();
                }
            }, cancellationToken));
        }

        await Task.WhenAll(pending);
        outcome.Elapsed = clock.Elapsed;
        return outcome;
    }

    private async Task SendAsync((int First, int Count, byte[] Body) request, SubmitOutcome outcome, CancellationToken cancellationToken)
    {
        var content = new ByteArrayContent(request.Body);
        content.Headers.ContentType = Json;
        using var message = new HttpRequestMessage(HttpMethod.Post, IsBatch(request.Body) ? _batch : _single) { Content = content };
        try
        {
            using var response = await api.SendAsync(message, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
            if ((int)response.StatusCode == 202)
            {
                for (var i = 0; i < request.Count; i++)
                {
                    outcome.Accepted[request.First + i] = true;
                }
            }
            else
            {
                outcome.Reject((int)response.StatusCode, request.Count);
            }
        }
        catch (HttpRequestException)
        {
            outcome.Reject(0, request.Count);
        }
        catch (TaskCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            outcome.Reject(0, request.Count); // the client's timeout: the event's fate is unknown, so it is not counted as accepted
        }

        Interlocked.Add(ref _submitted, request.Count);
    }

    private static bool IsBatch(byte[] body) => body.AsSpan().StartsWith("{\"events\":"u8);
}
