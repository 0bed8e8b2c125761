using System.Text.Json;

namespace EventPipeline.Producer.DeadLetters;

/// <summary>The failure that ended an event's last run (for a broker dead-lettering: the broker's reason).</summary>
public sealed record DeadLetterError(string? Type, string? Message, string? StackTrace);

/// <summary>One failure in an event's history: each failed attempt where the lane records it, across replays.</summary>
public sealed record DeadLetterHistoryEntry(int? Attempt, string? Type, string? Message, DateTimeOffset? At);

/// <summary>A dead-lettered event, the same shape for both lanes.</summary>
/// <param name="Reason"><c>failed</c> (the handler threw on the last attempt) or <c>delivery-limit</c> (the consumer kept dying).</param>
/// <param name="Attempts">runs of the event before it was dead-lettered, when the lane knows it.</param>
/// <param name="Errors">the error history, oldest first, including failures from before earlier replays.</param>
public sealed record DeadLetter(
    string Id,
    string Lane,
    string Type,
    JsonElement Payload,
    DateTimeOffset? AcceptedAt,
    DateTimeOffset? DeadAt,
    int? Attempts,
    string Reason,
    DeadLetterError Error,
    IReadOnlyList<DeadLetterHistoryEntry> Errors)
{
    public DeadLetterSummary Summary() => new(Id, Lane, Type, Attempts, Reason, Error.Type, Error.Message, DeadAt);
}

public sealed record DeadLetterSummary(string Id, string Lane, string Type, int? Attempts, string Reason, string? ErrorType, string? ErrorMessage, DateTimeOffset? DeadAt);

/// <param name="Total">dead letters in the lane right now.</param>
/// <param name="Next">pass as <c>after</c> for the next page; null on the last page.</param>
public sealed record DeadLetterPage(string Lane, long Total, IReadOnlyList<DeadLetterSummary> Items, string? Next);

/// <param name="State"><c>accepted</c> when the event went back to its lane; <c>succeeded</c> when it had already
/// succeeded, so its stale dead letter was dropped and nothing was replayed.</param>
public sealed record DeadLetterReplayed(string Id, string Lane, string State);

/// <param name="Replayed">how many dead letters went back to the lane in this call.</param>
/// <param name="Remaining">dead letters still in the lane (over the bound, or dead-lettered meanwhile), counted by the
/// operation itself before it let the next one start; null when the broker gave no count then (the work is done; list to see).</param>
/// <param name="AlreadySucceeded">dead letters dropped, not replayed, because their event had already succeeded.</param>
public sealed record DeadLettersReplayed(string Lane, int Replayed, long? Remaining, int AlreadySucceeded);

/// <param name="Deleted">how many dead letters this call removed for good.</param>
/// <param name="Remaining">as in <see cref="DeadLettersReplayed"/>: counted by the operation itself; null when the broker gave no count.</param>
public sealed record DeadLettersDeleted(string Lane, int Deleted, long? Remaining);

/// <summary>What a replay of one dead letter did.</summary>
public enum ReplayOutcome
{
    /// <summary>No dead letter has that id (or another operation removed it first).</summary>
    NotFound,

    /// <summary>The event is back in its lane, accepted.</summary>
    Replayed,

    /// <summary>The event had already succeeded: its dead letter was stale and was dropped; nothing runs again.</summary>
    AlreadySucceeded,
}

/// <param name="Replayed">dead letters sent back to the lane.</param>
/// <param name="AlreadySucceeded">dead letters dropped because their event had already succeeded.</param>
/// <param name="Remaining">dead letters left in the lane, counted before the operation let another one start (null: no count).</param>
public sealed record ReplayAllResult(int Replayed, int AlreadySucceeded, long? Remaining);

/// <param name="Deleted">dead letters this call removed itself.</param>
/// <param name="Remaining">as in <see cref="ReplayAllResult"/>.</param>
public sealed record DeleteAllResult(int Deleted, long? Remaining);

/// <summary>Another dead-letter operation on the lane holds its lock: the caller gets 409 and may retry.</summary>
public sealed class DeadLetterBusyException(string lane) : Exception($"Another dead-letter operation on the {lane} lane is running");

/// <summary>The lane's broker did not answer in time.</summary>
public sealed class DeadLetterStoreUnavailableException(string lane, Exception inner)
    : Exception($"The {lane} lane's dead-letter store is unavailable: {inner.Message}", inner)
{
    public string Lane { get; } = lane;
}

/// <summary>
/// One lane's dead letters. A replay puts the event back into its lane under the same id, with its error history,
/// and with attempts starting again from 1; it leaves the dead-letter store only once the lane holds it again. A replay
/// never turns a <c>succeeded</c> event back: the dead letter of an event that already succeeded is dropped instead.
/// </summary>
public interface IDeadLetterLane
{
    string Lane { get; }

    /// <summary>Whether <paramref name="after"/> has the shape of a cursor this lane hands out as <c>next</c>.</summary>
    bool IsCursor(string after);

    Task<DeadLetterPage> ListAsync(string? after, int limit, CancellationToken cancellationToken);

    Task<DeadLetter?> GetAsync(string id, CancellationToken cancellationToken);

    Task<ReplayOutcome> ReplayAsync(string id, CancellationToken cancellationToken);

    /// <summary>Replays, oldest first, at most <paramref name="max"/> of the dead letters there were when the call began.</summary>
    Task<ReplayAllResult> ReplayAllAsync(int max, CancellationToken cancellationToken);

    /// <returns>false when no dead letter has that id.</returns>
    Task<bool> DeleteAsync(string id, CancellationToken cancellationToken);

    /// <summary>
    /// Deletes, oldest first, at most <paramref name="max"/> of the dead letters there were when the call began; each
    /// one only if this call removed it itself (one replayed or deleted meanwhile is skipped, never counted twice).
    /// </summary>
    /// <returns>how many this call removed, and how many remain.</returns>
    Task<DeleteAllResult> DeleteAllAsync(int max, CancellationToken cancellationToken);

    Task<long> CountAsync(CancellationToken cancellationToken);
}

public sealed class DeadLetterOptions
{
    /// <summary>Most dead letters a single <c>replay all</c> call sends back.</summary>
    public int ReplayAllLimit { get; set; } = 1000;

    /// <summary>Most dead letters read to find one by id or to reach a page (both stores are scanned, not indexed).</summary>
    public int MaxScan { get; set; } = 10_000;

    public int DefaultPageSize { get; set; } = 50;

    public int MaxPageSize { get; set; } = 500;

    /// <summary>How long one operation may hold the lane's dead-letter lock (never renewed; nothing unsafe happens when it expires).</summary>
    public TimeSpan LockTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// How long an I/O dead-letter operation waits for this process's scans before it (a long replay-all, or a scan stalled
    /// by a broker that does not answer); then it is answered 409 <c>dead-letter-busy</c> with <c>Retry-After</c>.
    /// </summary>
    public TimeSpan ScanQueueTimeout { get; set; } = TimeSpan.FromSeconds(15);
}

internal static class PayloadJson
{
    /// <summary>The stored payload text as JSON; text that is not JSON is shown as a JSON string, never dropped.</summary>
    public static JsonElement Parse(string? text)
    {
        if (string.IsNullOrEmpty(text))
        {
            return JsonSerializer.SerializeToElement<object?>(null);
        }

        try
        {
            using var document = JsonDocument.Parse(text);
            return document.RootElement.Clone();
        }
        catch (JsonException)
        {
            return JsonSerializer.SerializeToElement(text);
        }
    }

    private static readonly JsonSerializerOptions HistoryOptions = new(JsonSerializerDefaults.Web);

    /// <summary>Reads an error history array (either lane's writer; property names in any case).</summary>
    public static List<DeadLetterHistoryEntry> ParseHistory(string? text)
    {
        if (string.IsNullOrEmpty(text))
        {
            return [];
        }

        try
        {
            return JsonSerializer.Deserialize<List<DeadLetterHistoryEntry>>(text, HistoryOptions) ?? [];
        }
        catch (JsonException)
        {
            return [];
        }
    }

    public static string WriteHistory(IEnumerable<DeadLetterHistoryEntry> history) => JsonSerializer.Serialize(history, HistoryOptions);
}
