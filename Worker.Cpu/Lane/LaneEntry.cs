using System.Text.Json;
using EventPipeline.Shared;
using StackExchange.Redis;
using F = EventPipeline.Shared.CpuLaneStreams.Fields;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>One stream entry of the CPU lane, as read by this consumer.</summary>
public sealed record LaneEntry(
    RedisValue EntryId,
    string Id,
    string Type,
    string Payload,
    DateTimeOffset AcceptedAt,
    int Attempt,
    NameValueEntry[] TraceContext,
    string ErrorHistory)
{
    /// <summary>
    /// Runs of this entry that never finished because their consumer died (0 for a fresh read). Above 0 the entry is a
    /// suspect: it may be what killed the consumer, so it runs alone (see <see cref="SuspectIsolationGate"/>).
    /// </summary>
    public long UnfinishedRuns { get; init; }

    public bool IsSuspect => UnfinishedRuns > 0;

    /// <summary>Errors of earlier attempts, a JSON array, carried along through retries into the dead-letter entry.</summary>
    public const string ErrorsField = "errors";

    public static LaneEntry Parse(RedisValue entryId, IReadOnlyDictionary<string, string> fields) => new(
        entryId,
        fields.GetValueOrDefault(F.Id, ""),
        fields.GetValueOrDefault(F.Type, ""),
        fields.GetValueOrDefault(F.Payload, "{}"),
        long.TryParse(fields.GetValueOrDefault(F.AcceptedAt), out var ms) ? DateTimeOffset.FromUnixTimeMilliseconds(ms) : DateTimeOffset.UtcNow,
        int.TryParse(fields.GetValueOrDefault(F.Attempt), out var attempt) && attempt > 0 ? attempt : 1,
        LaneTraceContext.Of(fields),
        fields.GetValueOrDefault(ErrorsField, "[]"));

    public static LaneEntry Parse(StreamEntry entry) =>
        Parse(entry.Id, entry.Values.ToDictionary(v => v.Name.ToString(), v => v.Value.ToString()));

    /// <summary>The error history with this attempt's failure appended.</summary>
    public string HistoryWith(Exception error, DateTimeOffset at)
    {
        var history = JsonSerializer.Deserialize<List<ErrorRecord>>(ErrorHistory) ?? [];
        history.Add(new ErrorRecord(Attempt, error.GetType().FullName ?? error.GetType().Name, error.Message, at));
        return JsonSerializer.Serialize(history);
    }

    /// <summary>Field/value pairs for the next attempt, all strings (the retry script copies them into XADD as is).</summary>
    public Dictionary<string, string> NextAttemptFields(string errorHistory)
    {
        var fields = new Dictionary<string, string>
        {
            [F.Id] = Id,
            [F.Type] = Type,
            [F.Payload] = Payload,
            [F.AcceptedAt] = AcceptedAt.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture),
            [F.Attempt] = (Attempt + 1).ToString(System.Globalization.CultureInfo.InvariantCulture),
            [ErrorsField] = errorHistory,
        };
        foreach (var field in TraceContext)
        {
            fields[field.Name!] = field.Value!;
        }

        return fields;
    }
}

public sealed record ErrorRecord(int Attempt, string Type, string Message, DateTimeOffset At);
