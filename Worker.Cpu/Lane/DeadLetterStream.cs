using System.Globalization;
using EventPipeline.Shared;
using StackExchange.Redis;
using F = EventPipeline.Shared.CpuLaneStreams.Fields;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// The end of the line for an event that cannot succeed: XADD to <c>events.cpu.dead</c> with the event, the error
/// (type, message, stack), attempts and times, together with XACK/XDEL and the <c>dead</c> status in one MULTI/EXEC,
/// so a crash can neither lose the event nor leave it both pending and dead.
/// </summary>
public sealed class DeadLetterStream(IConnectionMultiplexer redis, EventStatusStore statuses)
{
    public const string ReasonFailed = "failed";
    public const string ReasonDeliveryLimit = "delivery-limit";

    public async Task DeadLetterAsync(LaneEntry entry, string reason, string errorType, string errorMessage, string? stackTrace, string errorHistory)
    {
        var now = DateTimeOffset.UtcNow;
        NameValueEntry[] fields =
        [
            new(F.Id, entry.Id),
            new(F.Type, entry.Type),
            new(F.Payload, entry.Payload),
            new(F.AcceptedAt, entry.AcceptedAt.ToUnixTimeMilliseconds()),
            new("attempts", entry.Attempt),
            new("reason", reason),
            new("errorType", errorType),
            new("errorMessage", errorMessage),
            new("errorStack", stackTrace ?? ""),
            new(LaneEntry.ErrorsField, errorHistory),
            new("deadAt", now.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture)),
            new("sourceEntryId", entry.EntryId),
            new(F.TraceParent, entry.TraceParent),
        ];

        var transaction = redis.GetDatabase().CreateTransaction();
        _ = transaction.StreamAddAsync(CpuLaneStreams.DeadLetters, fields);
        _ = statuses.MarkDeadAsync(transaction, entry.Id, entry.Attempt, $"{errorType}: {errorMessage}");
        _ = EntryAcknowledger.AcknowledgeAsync(transaction, entry.EntryId);
        await EntryAcknowledger.CommitAsync(transaction);
    }

    public Task DeadLetterAsync(LaneEntry entry, Exception error) =>
        DeadLetterAsync(entry, ReasonFailed, error.GetType().FullName ?? error.GetType().Name, error.Message, error.StackTrace,
            entry.HistoryWith(error, DateTimeOffset.UtcNow));
}
