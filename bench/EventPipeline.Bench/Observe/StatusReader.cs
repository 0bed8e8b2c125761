using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Serialization;
using StackExchange.Redis;

namespace EventPipeline.Bench.Observe;

/// <summary>What the pipeline recorded about one event (times in unix ms, as the status hash holds them).</summary>
public sealed record EventRecord(string State, long? AcceptedAt, long? StartedAt, long? FinishedAt, long? Completions);

/// <summary>Reads the status the pipeline keeps for each event, many at a time.</summary>
public interface IStatusReader : IAsyncDisposable
{
    /// <summary>True when <see cref="EventRecord.Completions"/> is known (Redis), false over HTTP.</summary>
    bool KnowsCompletions { get; }

    /// <summary>The records of <paramref name="ids"/>, in order; null where the event is unknown.</summary>
    Task<EventRecord?[]> ReadAsync(IReadOnlyList<string> ids, CancellationToken cancellationToken);

    /// <summary>
    /// Only the state of each of <paramref name="ids"/> (null where unknown): what the completion waiter polls while a
    /// scenario is measured. A reader that can fetch less than the whole record does so.
    /// </summary>
    async Task<string?[]> ReadStatesAsync(IReadOnlyList<string> ids, CancellationToken cancellationToken) =>
        [.. (await ReadAsync(ids, cancellationToken)).Select(r => r?.State)];
}

/// <summary>
/// Straight from the status hashes <c>event:{id}</c> (Pipeline.Shared/EventStatusStore.cs), pipelined in chunks: 100,000
/// events read in seconds, without loading the API that is being measured.
/// </summary>
public sealed class RedisStatusReader(ConnectionMultiplexer redis) : IStatusReader
{
    private const int Chunk = 2000;

    /// <summary>Timed-out chunk reads repeated per call before the timeout is the caller's.</summary>
    private const int MaxTimeouts = 5;
    private static readonly RedisValue[] Fields = ["state", "acceptedAt", "startedAt", "finishedAt", "completions"];

    /// <summary>
    /// Connects, retrying for up to a minute: on a loaded machine (a CI run with both cores busy) one connect failed
    /// ("Error connecting right now") moments after the AppHost reported Redis healthy, and failed the whole run.
    /// </summary>
    public static async Task<RedisStatusReader> ConnectAsync(string connectionString)
    {
        var options = ConfigurationOptions.Parse(connectionString);
        options.AbortOnConnectFail = false;
        var redis = await ConnectionMultiplexer.ConnectAsync(options);
        var deadline = DateTimeOffset.UtcNow.AddMinutes(1);
        while (!redis.IsConnected)
        {
            if (DateTimeOffset.UtcNow > deadline)
            {
                await redis.DisposeAsync();
                throw new InvalidOperationException($"the bench's status reader did not connect to Redis within a minute ({options.EndPoints.FirstOrDefault()})");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(100));
        }

        return new RedisStatusReader(redis);
    }

    public bool KnowsCompletions => true;

    public async Task<EventRecord?[]> ReadAsync(IReadOnlyList<string> ids, CancellationToken cancellationToken)
    {
        var db = redis.GetDatabase();
        var result = new EventRecord?[ids.Count];
        for (var start = 0; start < ids.Count; start += Chunk)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var count = Math.Min(Chunk, ids.Count - start);
            var batch = db.CreateBatch();
            var reads = new Task<RedisValue[]>[count];
            for (var i = 0; i < count; i++)
            {
                reads[i] = batch.HashGetAsync($"event:{ids[start + i]}", Fields);
            }

            batch.Execute();
            await Task.WhenAll(reads);
            for (var i = 0; i < count; i++)
            {
                var v = reads[i].Result;
                result[start + i] = v[0].IsNull ? null : new EventRecord(v[0]!, Long(v[1]), Long(v[2]), Long(v[3]), Long(v[4]) ?? 0);
            }
        }

        return result;
    }

    /// <summary>
    /// One HGET of <c>state</c> per event instead of the five-field HMGET: the waiter runs inside the measured window, and
    /// what it costs the client and Redis there is taken from the system under test.
    /// </summary>
    public async Task<string?[]> ReadStatesAsync(IReadOnlyList<string> ids, CancellationToken cancellationToken)
    {
        var db = redis.GetDatabase();
        var result = new string?[ids.Count];
        var timeouts = 0;
        for (var start = 0; start < ids.Count; start += Chunk)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var count = Math.Min(Chunk, ids.Count - start);
            var batch = db.CreateBatch();
            var reads = new Task<RedisValue>[count];
            for (var i = 0; i < count; i++)
            {
                reads[i] = batch.HashGetAsync($"event:{ids[start + i]}", Fields[0]);
            }

            batch.Execute();
            try
            {
                await Task.WhenAll(reads);
            }
            catch (RedisTimeoutException) when (++timeouts <= MaxTimeouts)
            {
                // A read is safe to repeat: on a loaded machine (two test projects at once, CI) one chunk's answer can
                // take longer than the client's timeout, and that must not end a run whose deadline is minutes away.
                start -= Chunk;
                continue;
            }

            for (var i = 0; i < count; i++)
            {
                result[start + i] = reads[i].Result;
            }
        }

        return result;
    }

    private static long? Long(RedisValue value) => value.IsNull ? null : (long)value;

    public async ValueTask DisposeAsync() => await redis.DisposeAsync();
}

/// <summary>Over <c>GET /events/{id}</c>, for a running system whose Redis the tool was not given.</summary>
public sealed class HttpStatusReader(HttpClient api, int parallelism) : IStatusReader
{
    public bool KnowsCompletions => false;

    public async Task<EventRecord?[]> ReadAsync(IReadOnlyList<string> ids, CancellationToken cancellationToken)
    {
        var result = new EventRecord?[ids.Count];
        await Parallel.ForAsync(0, ids.Count, new ParallelOptions { MaxDegreeOfParallelism = parallelism, CancellationToken = cancellationToken }, async (i, ct) =>
        {
            using var response = await api.GetAsync($"/events/{Uri.EscapeDataString(ids[i])}", ct);
            if (response.StatusCode == HttpStatusCode.NotFound)
            {
                return;
            }

            response.EnsureSuccessStatusCode();
            var dto = await response.Content.ReadFromJsonAsync<StatusDto>(ct);
            result[i] = dto is null ? null : new EventRecord(dto.State, Ms(dto.AcceptedAt), Ms(dto.StartedAt), Ms(dto.FinishedAt), null);
        });
        return result;
    }

    private static long? Ms(DateTimeOffset? time) => time?.ToUnixTimeMilliseconds();

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    private sealed record StatusDto(
        [property: JsonPropertyName("state")] string State,
        [property: JsonPropertyName("acceptedAt")] DateTimeOffset? AcceptedAt,
        [property: JsonPropertyName("startedAt")] DateTimeOffset? StartedAt,
        [property: JsonPropertyName("finishedAt")] DateTimeOffset? FinishedAt);
}
