using System.Collections.Concurrent;
using System.Diagnostics;

namespace EventPipeline.Bench.Chaos;

/// <summary>What the checker knows about one event: why it must be accounted for, and every state it was seen in.</summary>
public sealed class TrackedEvent(string id, string? type, string origin, string? parentId = null)
{
    private readonly List<string> _history = [];

    public string Id { get; } = id;

    /// <summary>
    /// The event type the client sent (<c>webhook.post</c> for a chained event's next stage); for an id only named in a
    /// 503's <c>heldIds</c> it is read from the status at the end.
    /// </summary>
    public string? Type { get; set; } = type;

    /// <summary>The client operation that made the checker track it (op number, shape, key).</summary>
    public string Origin { get; } = origin;

    /// <summary>For a chained event's next stage (<c>{id}.then</c>): the CPU event it was derived from.</summary>
    public string? ParentId { get; } = parentId;

    /// <summary>A CPU event with <c>payload.then</c>: once it succeeded, <c>{id}.then</c> must be accounted for too.</summary>
    public bool Chains { get; init; }

    /// <summary>True when the receiver sees this event (webhook.post): its deliveries are counted.</summary>
    public bool DeliversDownstream => Type == "webhook.post";

    /// <summary>The last state read (null: no status seen yet).</summary>
    public string? LastState { get; private set; }

    public bool EverFinal { get; private set; }

    public bool EverSucceeded { get; private set; }

    /// <summary>Set when a read found the event in another state after it had been seen <c>succeeded</c>.</summary>
    public string? LeftSucceeded { get; private set; }

    public long Completions { get; set; }

    public long Replays { get; set; }

    public int? ReceiverCount { get; set; }

    /// <summary>Answers, state changes and operator actions, oldest first, with the run time at which they happened.</summary>
    public IReadOnlyList<string> History
    {
        get
        {
            lock (_history)
            {
                return [.. _history];
            }
        }
    }

    public void Note(TimeSpan at, string what)
    {
        lock (_history)
        {
            if (_history.Count < 60)
            {
                _history.Add($"{at.TotalSeconds:F1}s {what}");
            }
        }
    }

    /// <summary>Records a read of the status; a change of state goes into the history.</summary>
    public void Observe(TimeSpan at, string? state)
    {
        lock (_history)
        {
            if (state == LastState)
            {
                return;
            }

            if (EverSucceeded && LastState == "succeeded" && state != "succeeded" && LeftSucceeded is null)
            {
                LeftSucceeded = $"{at.TotalSeconds:F1}s succeeded → {state ?? "(no status)"}";
            }

            LastState = state;
            EverFinal |= state is "succeeded" or "dead";
            EverSucceeded |= state == "succeeded";
            if (_history.Count < 60)
            {
                _history.Add($"{at.TotalSeconds:F1}s state {state ?? "(no status)"}");
            }
        }
    }

    public bool IsFinal => LastState is "succeeded" or "dead";
}

/// <summary>One Idempotency-Key (or client-given id set) and the ids each of its tries was answered with.</summary>
public sealed class KeyedRequest(string key, int events, string origin)
{
    private readonly List<(string Answer, IReadOnlyList<string> Ids)> _answers = [];

    public string Key { get; } = key;

    public int Events { get; } = events;

    public string Origin { get; } = origin;

    public void Answered(string answer, IReadOnlyList<string> ids)
    {
        lock (_answers)
        {
            _answers.Add((answer, ids));
        }
    }

    public IReadOnlyList<(string Answer, IReadOnlyList<string> Ids)> Answers
    {
        get
        {
            lock (_answers)
            {
                return [.. _answers];
            }
        }
    }

    /// <summary>Every id any try was told about: more than the request has events means a key got two ids for one event.</summary>
    public IReadOnlyList<string> DistinctIds => [.. Answers.SelectMany(a => a.Ids).Distinct(StringComparer.Ordinal)];
}

/// <summary>
/// The run's history, shared by the clients, the operator, the state poller and the nemesis: every event a broker was
/// said to hold, every idempotency key with the ids its tries got, every answer by status, every fault injected.
/// </summary>
public sealed class ChaosHistory
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly ConcurrentDictionary<string, TrackedEvent> _events = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, KeyedRequest> _keys = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int> _answers = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int> _faults = new(StringComparer.Ordinal);
    private readonly ConcurrentQueue<string> _timeline = new();

    public TimeSpan Now => _clock.Elapsed;

    public IReadOnlyCollection<TrackedEvent> Events => [.. _events.Values];

    public IReadOnlyCollection<KeyedRequest> Keys => [.. _keys.Values];

    public IReadOnlyDictionary<string, int> AnswerCounts => new SortedDictionary<string, int>(_answers, StringComparer.Ordinal);

    public IReadOnlyDictionary<string, int> FaultCounts => new SortedDictionary<string, int>(_faults, StringComparer.Ordinal);

    /// <summary>Nemesis actions and heal steps, in order (printed with the findings to relate them in time).</summary>
    public IReadOnlyCollection<string> Timeline => [.. _timeline];

    public TrackedEvent Track(string id, string? type, string origin, string how, bool chains = false, string? parentId = null)
    {
        var tracked = _events.GetOrAdd(id, _ => new TrackedEvent(id, type, origin, parentId) { Chains = chains });
        tracked.Type ??= type;
        tracked.Note(Now, how);
        return tracked;
    }

    public TrackedEvent? Find(string id) => _events.GetValueOrDefault(id);

    public KeyedRequest Keyed(string key, int events, string origin) => _keys.GetOrAdd(key, _ => new KeyedRequest(key, events, origin));

    public void CountAnswer(string answer) => _answers.AddOrUpdate(answer, 1, (_, n) => n + 1);

    public void CountFault(string kind) => _faults.AddOrUpdate(kind, 1, (_, n) => n + 1);

    public void Mark(string what) => _timeline.Enqueue($"{Now.TotalSeconds:F1}s {what}");
}
