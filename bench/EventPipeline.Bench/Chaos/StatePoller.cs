using StackExchange.Redis;

namespace EventPipeline.Bench.Chaos;

/// <summary>
/// Reads the status of every tracked event straight from the status hashes (<c>event:{id}</c>,
/// Pipeline.Shared/EventStatusStore.cs) about once a second, so that a state an event passes through is in its history:
/// an event seen <c>succeeded</c> and later in another state broke "nothing overwrites succeeded", whatever it ends as.
/// A chained CPU event that succeeded adds its next stage (<c>{id}.then</c>) to what must be accounted for.
/// </summary>
public sealed class StatePoller(IConnectionMultiplexer redis, ChaosHistory history)
{
    private const int Chunk = 1000;
    private static readonly RedisValue[] Fields = ["state", "type", "completions", "replays"];

    public const string ChainSuffix = ".then";

    private int _failedRounds;

    /// <summary>Rounds that could not read (Redis killed or paused): those moments are not in the histories.</summary>
    public int FailedRounds => Volatile.Read(ref _failedRounds);

    public async Task RunAsync(CancellationToken stop)
    {
        try
        {
            while (!stop.IsCancellationRequested)
            {
                await PollOnceAsync(stop);
                await Task.Delay(TimeSpan.FromSeconds(1), stop);
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    /// <returns>false when Redis did not answer.</returns>
    public async Task<bool> PollOnceAsync(CancellationToken cancellationToken)
    {
        var events = history.Events.ToList();
        try
        {
            var db = redis.GetDatabase();
            for (var start = 0; start < events.Count; start += Chunk)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var chunk = events.GetRange(start, Math.Min(Chunk, events.Count - start));
                var batch = db.CreateBatch();
                var reads = chunk.Select(e => batch.HashGetAsync($"event:{e.Id}", Fields)).ToArray();
                batch.Execute();
                await Task.WhenAll(reads).WaitAsync(TimeSpan.FromSeconds(5), cancellationToken);
                var at = history.Now;
                for (var i = 0; i < chunk.Count; i++)
                {
                    var values = reads[i].Result;
                    var tracked = chunk[i];
                    tracked.Observe(at, values[0].IsNull ? null : values[0].ToString());
                    if (!values[1].IsNull)
                    {
                        tracked.Type ??= values[1].ToString();
                    }

                    tracked.Completions = values[2].IsNull ? 0 : (long)values[2];
                    tracked.Replays = values[3].IsNull ? 0 : (long)values[3];
                    if (tracked.Chains && tracked.LastState == "succeeded" && history.Find(tracked.Id + ChainSuffix) is null)
                    {
                        history.Track(tracked.Id + ChainSuffix, "webhook.post", $"next stage of {tracked.Id} ({tracked.Origin})",
                            $"expected: {tracked.Id} succeeded", parentId: tracked.Id);
                    }
                }
            }

            return true;
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException)
        {
            Interlocked.Increment(ref _failedRounds);
            return false;
        }
    }
}
