namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// Admits entries to be taken up, at most <see cref="StartedBound.Current"/> at once, in the order they came; and runs
/// a suspect entry (one whose earlier run died with its consumer) alone in this process: it enters only when nothing
/// else is inside, and nothing enters beside it, so when it crashes the process again no innocent event is running
/// beside it and only the suspect's unfinished-run count grows. Ordinary entries run in parallel as usual.
/// </summary>
/// <remarks>
/// First come, first admitted: a suspect waiting holds back every entry behind it, so it is never starved by a stream
/// of ordinary ones. A lowered bound admits no one until fewer than it are inside; entries already inside stay.
/// </remarks>
public sealed class SuspectIsolationGate
{
    private readonly StartedBound _bound;
    private readonly Lock _lock = new();
    private readonly Queue<Waiter> _waiting = new();
    private readonly IAsyncDisposable _ordinaryExit;
    private readonly IAsyncDisposable _suspectExit;

    // Guarded by _lock.
    private int _inside;
    private bool _suspectInside;

    public SuspectIsolationGate(StartedBound bound)
    {
        _bound = bound;
        _ordinaryExit = new Exit(this, suspect: false);
        _suspectExit = new Exit(this, suspect: true);
        bound.Raised += AdmitWaiting;
    }

    /// <summary>Entries inside now (taken up and not yet out of the gate).</summary>
    public int Inside
    {
        get
        {
            lock (_lock)
            {
                return _inside;
            }
        }
    }

    /// <summary>Waits for the entry's turn; dispose the result when its work (and its failure's write) is over.</summary>
    public ValueTask<IAsyncDisposable> EnterAsync(LaneEntry entry)
    {
        var suspect = entry.IsSuspect;
        lock (_lock)
        {
            if (_waiting.Count == 0 && CanEnter(suspect))
            {
                return new(Admit(suspect));
            }

            var waiter = new Waiter(suspect);
            _waiting.Enqueue(waiter);
            return new(waiter.Admitted.Task);
        }
    }

    private bool CanEnter(bool suspect) => suspect ? _inside == 0 : !_suspectInside && _inside < _bound.Current;

    private IAsyncDisposable Admit(bool suspect)
    {
        _inside++;
        _suspectInside |= suspect;
        return suspect ? _suspectExit : _ordinaryExit;
    }

    private void Leave(bool suspect)
    {
        lock (_lock)
        {
            _inside--;
            if (suspect)
            {
                _suspectInside = false;
            }

            AdmitWaitingLocked();
        }
    }

    private void AdmitWaiting()
    {
        lock (_lock)
        {
            AdmitWaitingLocked();
        }
    }

    private void AdmitWaitingLocked()
    {
        // Continuations run asynchronously (the waiters' sources), so completing them under the lock runs no handler here.
        while (_waiting.TryPeek(out var next) && CanEnter(next.Suspect))
        {
            _waiting.Dequeue();
            next.Admitted.TrySetResult(Admit(next.Suspect));
        }
    }

    private sealed class Waiter(bool suspect)
    {
        public bool Suspect { get; } = suspect;

        public TaskCompletionSource<IAsyncDisposable> Admitted { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private sealed class Exit(SuspectIsolationGate gate, bool suspect) : IAsyncDisposable
    {
        public ValueTask DisposeAsync()
        {
            gate.Leave(suspect);
            return ValueTask.CompletedTask;
        }
    }
}
