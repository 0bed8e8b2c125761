using System.Collections.Concurrent;
using System.Threading.Channels;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// The bounded hand-off between the readers (new entries, claimed entries) and the handlers. Its capacity is what
/// applies backpressure: a reader that finds it full stops reading, and the entries wait in Redis, not in memory.
/// It fills to 2 × the started bound in force (<see cref="StartedBound"/>; its channel has room for 2 × the highest), so
/// a consumer of long jobs holds no more than with a fixed bound. The stream reader reads again only once half of it is
/// free (<see cref="WaitForRoomAsync"/>), so a backlog is read half a buffer at a time rather than one entry per slot
/// that a finished job frees; the handlers still have the other half to work on meanwhile, and an empty buffer (a quiet
/// lane) is read at once.
/// It also knows which entries this consumer holds, so they can be kept fresh against claiming.
/// </summary>
public sealed class LaneBuffer
{
    private readonly Channel<LaneEntry> _channel;
    private readonly StartedBound _bound;
    private readonly ConcurrentDictionary<RedisValue, LaneEntry> _held = new();
    private readonly Lock _room = new();
    private TaskCompletionSource? _roomWaiter;

    public LaneBuffer(IOptions<CpuLaneOptions> options, StartedBound bound)
    {
        _bound = bound;
        _channel = Channel.CreateBounded<LaneEntry>(new BoundedChannelOptions(options.Value.BufferCapacity)
        {
            SingleReader = false,
            SingleWriter = false,
            FullMode = BoundedChannelFullMode.Wait,
        });
        ConsumerName = $"{Environment.MachineName}-{Environment.ProcessId}";
    }

    /// <summary>This process's consumer name in the group: host + pid, unique per process.</summary>
    public string ConsumerName { get; }

    /// <summary>What the buffer fills to now: 2 × the started bound in force.</summary>
    public int Capacity => 2 * _bound.Current;

    public int FreeSlots => Math.Max(0, Capacity - _channel.Reader.Count);

    public ChannelReader<LaneEntry> Reader => _channel.Reader;

    public IReadOnlyCollection<RedisValue> HeldEntryIds => [.. _held.Keys];

    /// <summary>Free slots at which the stream reader reads again: half the buffer (at least one).</summary>
    public int ReadThreshold => Math.Max(1, _bound.Current);

    /// <summary>Waits until at least <see cref="ReadThreshold"/> slots are free (one read then fetches that many).</summary>
    public async Task WaitForRoomAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            TaskCompletionSource waiter;
            lock (_room)
            {
                if (FreeSlots >= ReadThreshold)
                {
                    return;
                }

                waiter = _roomWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            await waiter.Task.WaitAsync(cancellationToken);
        }
    }

    /// <summary>A handler takes the next buffered entry; wakes the stream reader once half the buffer is free.</summary>
    public bool TryTake([System.Diagnostics.CodeAnalysis.MaybeNullWhen(false)] out LaneEntry entry)
    {
        if (!_channel.Reader.TryRead(out entry))
        {
            return false;
        }

        TaskCompletionSource? wake = null;
        lock (_room)
        {
            if (_roomWaiter is not null && FreeSlots >= ReadThreshold)
            {
                (wake, _roomWaiter) = (_roomWaiter, null);
            }
        }

        wake?.TrySetResult();
        return true;
    }

    /// <returns>false when the buffer was already closed for shutdown (the entry stays pending in Redis).</returns>
    public async ValueTask<bool> AddAsync(LaneEntry entry)
    {
        _held[entry.EntryId] = entry;
        try
        {
            await _channel.Writer.WriteAsync(entry);
            return true;
        }
        catch (ChannelClosedException)
        {
            _held.TryRemove(entry.EntryId, out _);
            return false;
        }
    }

    public void Release(LaneEntry entry) => Release(entry.EntryId);

    /// <summary>false once the entry was released: finished, or found claimed by another consumer.</summary>
    public bool Holds(LaneEntry entry) => _held.ContainsKey(entry.EntryId);

    /// <summary>Stops refreshing an entry: finished here, or claimed by another consumer (see <see cref="EntryOwnership"/>).</summary>
    public void Release(RedisValue entryId) => _held.TryRemove(entryId, out _);

    /// <summary>No more entries: handlers finish what is buffered, then stop.</summary>
    public void Close() => _channel.Writer.TryComplete();
}
