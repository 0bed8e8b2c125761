using System.Globalization;
using System.Text;

namespace EventPipeline.Bench.Chaos;

/// <summary>One event or key the checker flags, with why.</summary>
public sealed record Finding(string Id, string Why, string? LastState, IReadOnlyList<string> History);

/// <summary>The checker's verdict on a run.</summary>
public sealed record ChaosVerdict(
    int Seed,
    int Events,
    IReadOnlyDictionary<string, int> Faults,
    IReadOnlyList<Finding> Lost,
    IReadOnlyList<Finding> DuplicatedIds,
    IReadOnlyList<Finding> WrongStates,
    IReadOnlyList<Finding> DuplicateEffects)
{
    /// <summary>Lost events, keys with two ids and wrong states break a guarantee; duplicate effects are allowed (at-least-once).</summary>
    public bool Passed => Lost.Count == 0 && DuplicatedIds.Count == 0 && WrongStates.Count == 0;

    /// <summary>The one line a run ends with: <c>chaos: seed=… events=… faults=kind:n,… lost=… duplicatedIds=… wrongStates=… duplicateEffects=…</c>.</summary>
    public string SummaryLine
    {
        get
        {
            var faults = Faults.Count == 0 ? "none" : string.Join(',', Faults.OrderBy(f => f.Key, StringComparer.Ordinal).Select(f => $"{f.Key}:{f.Value}"));
            return string.Create(CultureInfo.InvariantCulture,
                $"chaos: seed={Seed} events={Events} faults={faults} lost={Lost.Count} duplicatedIds={DuplicatedIds.Count} wrongStates={WrongStates.Count} duplicateEffects={DuplicateEffects.Count}");
        }
    }

    /// <summary>The offending ids (first 20 of each kind) with their last known state and history.</summary>
    public string Details()
    {
        var text = new StringBuilder();
        void Section(string title, IReadOnlyList<Finding> findings)
        {
            if (findings.Count == 0)
            {
                return;
            }

            text.AppendLine(CultureInfo.InvariantCulture, $"{title}: {findings.Count}{(findings.Count > 20 ? " (first 20)" : "")}");
            foreach (var f in findings.Take(20))
            {
                text.AppendLine(CultureInfo.InvariantCulture, $"  {f.Id}: {f.Why}; last {(f.LastState?.Contains(' ') == true ? "states" : "state")} {f.LastState ?? "(no status)"}");
                foreach (var line in f.History)
                {
                    text.AppendLine(CultureInfo.InvariantCulture, $"      {line}");
                }
            }
        }

        Section("lost (accepted, but not succeeded or dead at the end)", Lost);
        Section("duplicatedIds (one idempotency key answered with more ids than it has events)", DuplicatedIds);
        Section("wrongStates (left succeeded, or stuck in a non-final state)", WrongStates);
        Section("duplicateEffects (at-least-once: the work's effect happened twice)", DuplicateEffects);
        return text.ToString();
    }
}

/// <summary>
/// Accounts for every event at the end of a run, as Jepsen's <c>total-queue</c> checker does for RabbitMQ:
/// <list type="bullet">
/// <item><b>lost</b>: an event a broker was said to hold (an id in a 202 or 200 answer, or in a 503's <c>heldIds</c>;
/// the next stage of a chained event that succeeded) that is not <c>succeeded</c> or <c>dead</c> at the end;</item>
/// <item><b>duplicatedIds</b>: an Idempotency-Key (or a set of client ids) whose tries were told about more ids than
/// the request has events — the same request enqueued under two ids;</item>
/// <item><b>wrongStates</b>: an event seen <c>succeeded</c> and later in another state, one whose success was recorded
/// twice (<c>completions</c> &gt; 1, which the status store allows only after the state left <c>succeeded</c>), or one
/// stuck in <c>accepted</c>/<c>processing</c>/<c>retrying</c> at the end (also counted as lost);</item>
/// <item><b>duplicateEffects</b>: the receiver accepted a webhook's delivery more than once (per Idempotency-Key, which is the
/// event id), or a success was recorded twice — allowed by at-least-once, counted and reported.</item>
/// </list>
/// </summary>
public static class TotalQueueChecker
{
    private static readonly string[] NonFinal = ["accepted", "processing", "retrying"];

    public static ChaosVerdict Check(int seed, IReadOnlyCollection<TrackedEvent> events, IReadOnlyCollection<KeyedRequest> keys, IReadOnlyDictionary<string, int> faults)
    {
        var ordered = events.OrderBy(e => e.Id, StringComparer.Ordinal).ToList();
        var lost = ordered
            .Where(e => !e.IsFinal)
            .Select(e => new Finding(e.Id, $"{e.Type ?? "?"} from {e.Origin}: {(e.LastState is null ? "no status at the end" : $"still {e.LastState} at the end")}{Deliveries(e)}", e.LastState, e.History))
            .ToList();

        var byId = ordered.ToDictionary(e => e.Id, StringComparer.Ordinal);
        var duplicated = keys
            .Where(k => k.DistinctIds.Count > k.Events)
            .OrderBy(k => k.Key, StringComparer.Ordinal)
            .Select(k => new Finding(k.Key, $"{k.Origin}: {k.Events} event(s) but {k.DistinctIds.Count} ids",
                string.Join(", ", k.DistinctIds.Select(id => $"{id} {byId.GetValueOrDefault(id)?.LastState ?? "(no status)"}")),
                [.. k.Answers.Select(a => a.Ids.Count > 0 ? $"{a.Answer}: {string.Join(' ', a.Ids)}" : a.Answer)]))
            .ToList();

        var wrong = new List<Finding>();
        foreach (var e in ordered)
        {
            var why = e.LeftSucceeded is { } left ? $"left succeeded ({left})"
                : e.Completions > 1 ? $"success recorded {e.Completions} times (it left succeeded in between)"
                : e.LastState is { } s && NonFinal.Contains(s) ? $"stuck {s} at the end"
                : null;
            if (why is not null)
            {
                wrong.Add(new Finding(e.Id, $"{e.Type ?? "?"} from {e.Origin}: {why}{Deliveries(e)}", e.LastState, e.History));
            }
        }

        var effects = ordered
            .Where(e => e.ReceiverCount > 1 || e.Completions > 1)
            .Select(e => new Finding(e.Id,
                e.ReceiverCount > 1 ? $"{e.Type} delivered {e.ReceiverCount} times (receiver 2xx per Idempotency-Key)" : $"success recorded {e.Completions} times",
                e.LastState, e.History))
            .ToList();

        return new ChaosVerdict(seed, ordered.Count, faults, lost, duplicated, wrong, effects);
    }

    /// <summary>For a webhook: whether the receiver got it tells "never done" from "done, outcome not recorded".</summary>
    private static string Deliveries(TrackedEvent e) =>
        e.ReceiverCount is { } n ? $" (receiver accepted it {n} time{(n == 1 ? "" : "s")})" : "";
}
