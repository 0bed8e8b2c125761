using System.Threading.Channels;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// Records successes in batches: every success that finished while the previous batch was on its way goes out in the
/// next script (<see cref="EntryAcknowledger.RecordSucceededAsync"/>), which writes each status and then acknowledges
/// (one XACK, HDEL and XDEL for all) exactly the entries whose success now reads as recorded and which this consumer
/// still holds. An entry whose status write failed stays pending and is run again; one that another consumer claimed
/// meanwhile is left to that consumer. Never acknowledged before its work finished; only the number of round trips
/// and commands per event falls. One batch is in flight at a time, so a batch grows by itself under load and is a
/// single event when the lane is quiet.
/// </summary>
public sealed class SuccessBatcher(
    IConnectionMultiplexer redis,
    EventStatusStore statuses,
    LaneBuffer buffer,
    IOptions<CpuLaneOptions> options,
    ILogger<SuccessBatcher> logger)
{
    private readonly Channel<Success> _pending = Channel.CreateBounded<Success>(new BoundedChannelOptions(options.Value.AckBatchSize * 4)
    {
        SingleReader = true,
        FullMode = BoundedChannelFullMode.Wait,
    });

    /// <summary>Queues a success; the task ends when it is recorded (true) or found already recorded (false).</summary>
    /// <remarks>Waits while too many successes are queued, so a slow Redis slows the handlers instead of filling memory.</remarks>
    public async Task<bool> SucceededAsync(LaneEntry entry, string result)
    {
        var success = new Success(entry, result, new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously));
        await _pending.Writer.WriteAsync(success);
        return await success.Recorded.Task;
    }

    /// <summary>Writes batches until <see cref="Complete"/> was called and every queued success is written.</summary>
    public async Task RunAsync()
    {
        var batch = new List<Success>(options.Value.AckBatchSize);
        while (await _pending.Reader.WaitToReadAsync())
        {
            batch.Clear();
            while (batch.Count < options.Value.AckBatchSize && _pending.Reader.TryRead(out var success))
            {
                batch.Add(success);
            }

            await WriteAsync(batch);
        }
    }

    /// <summary>No more successes will come (the handlers have finished).</summary>
    public void Complete() => _pending.Writer.TryComplete();

    private async Task WriteAsync(List<Success> batch)
    {
        try
        {
            var outcomes = await EntryAcknowledger.RecordSucceededAsync(redis.GetDatabase(), buffer.ConsumerName,
                [.. batch.Select(s => (s.Entry, s.Result))], statuses.TtlSeconds);
            for (var i = 0; i < batch.Count; i++)
            {
                var (entry, outcome) = (batch[i].Entry, outcomes[i]);
                if (outcome.Error is not null && !outcome.Acknowledged)
                {
                    // The entry stays pending and runs again; its handler reports the error.
                    batch[i].Recorded.TrySetException(new RedisServerException(outcome.Error));
                    continue;
                }

                if (!outcome.Acknowledged)
                {
                    // The status reads succeeded (else the error above), so the entry is another consumer's.
                    logger.LogWarning("Event {EventId} (entry {EntryId}) succeeded here, but another consumer claimed it meanwhile; its acknowledgement is left to that consumer",
                        entry.Id, entry.EntryId);
                }

                batch[i].Recorded.TrySetResult(outcome.Recorded);
            }
        }
        catch (Exception ex)
        {
            // Nothing of the batch was acknowledged: each entry stays pending and its handler reports it.
            foreach (var success in batch)
            {
                success.Recorded.TrySetException(ex);
            }
        }
    }

    private sealed record Success(LaneEntry Entry, string Result, TaskCompletionSource<bool> Recorded);
}
