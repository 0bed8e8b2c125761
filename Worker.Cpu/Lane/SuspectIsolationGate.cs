using Microsoft.Extensions.Options;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// Runs a suspect entry (one whose earlier run died with its consumer) alone in this process: it waits for every
/// handler slot, so when it crashes the process again no innocent event is running beside it and only the suspect's
/// unfinished-run count grows. Ordinary entries take one slot each and run in parallel as usual.
/// </summary>
public sealed class SuspectIsolationGate(IOptions<CpuLaneOptions> options)
{
    private readonly int _slots = options.Value.EffectiveMaxStarted;
    private readonly SemaphoreSlim _free = new(options.Value.EffectiveMaxStarted, options.Value.EffectiveMaxStarted);
    private readonly SemaphoreSlim _alone = new(1, 1);

    public async Task<IAsyncDisposable> EnterAsync(LaneEntry entry)
    {
        if (!entry.IsSuspect)
        {
            await _free.WaitAsync();
            return new Release(() => _free.Release());
        }

        // One suspect at a time collects the slots, so two suspects can never each hold half of them.
        await _alone.WaitAsync();
        for (var i = 0; i < _slots; i++)
        {
            await _free.WaitAsync();
        }

        return new Release(() =>
        {
            _free.Release(_slots);
            _alone.Release();
        });
    }

    private sealed class Release(Action release) : IAsyncDisposable
    {
        public ValueTask DisposeAsync()
        {
            release();
            return ValueTask.CompletedTask;
        }
    }
}
