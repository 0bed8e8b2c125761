namespace EventPipeline.Bench.Observe;

/// <summary>
/// Waits until every accepted event reached a final state (succeeded or dead) or the deadline passed. Events finish
/// roughly in submission order, so each round reads the oldest unfinished ones first and stops at a chunk that is
/// mostly unfinished: the status store is not hammered while the backlog drains. Each round starts with a probe of the
/// <see cref="Probe"/> oldest unfinished events and reads further only when those are mostly finished, each further
/// chunk twice the last (up to <see cref="Chunk"/>), so that while a long backlog drains (the PBKDF2 burst: ~150 events
/// finish per round) a round reads about twice what finished rather than 2,000 statuses, and the tool's own reads take
/// little of the CPU (its own and Redis's) the lane is measured on. What is measured does not change: once everything
/// has finished, every chunk is mostly finished and the round reads them all, so the drain is seen complete in the same
/// round as before (only the progress count of a round can lag by what finished behind the first mostly-open chunk).
/// </summary>
public sealed class CompletionWaiter(IStatusReader statuses)
{
    private const int Chunk = 2000;
    private const int Probe = 100;
    private int _finished;

    public int Finished => Volatile.Read(ref _finished);

    /// <returns>true when all finished before <paramref name="deadline"/>.</returns>
    public async Task<bool> WaitAsync(IReadOnlyList<string> accepted, DateTimeOffset deadline, CancellationToken cancellationToken)
    {
        var unfinished = new List<string>(accepted);
        Volatile.Write(ref _finished, 0);
        while (unfinished.Count > 0 && DateTimeOffset.UtcNow < deadline)
        {
            var stillOpen = new List<string>(unfinished.Count);
            var offset = 0;
            var size = Probe;
            while (offset < unfinished.Count)
            {
                var chunk = unfinished.GetRange(offset, Math.Min(size, unfinished.Count - offset));
                size = Math.Min(size * 2, Chunk);
                offset += chunk.Count;
                var states = await statuses.ReadStatesAsync(chunk, cancellationToken);
                var open = 0;
                for (var i = 0; i < chunk.Count; i++)
                {
                    if (states[i] is "succeeded" or "dead")
                    {
                        Interlocked.Increment(ref _finished);
                    }
                    else
                    {
                        stillOpen.Add(chunk[i]);
                        open++;
                    }
                }

                if (open * 2 > chunk.Count)
                {
                    break;
                }
            }

            if (offset < unfinished.Count)
            {
                stillOpen.AddRange(unfinished.Skip(offset));
            }

            unfinished = stillOpen;
            if (unfinished.Count > 0)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(250), cancellationToken);
            }
        }

        return unfinished.Count == 0;
    }
}
