using System.Diagnostics;
using System.Text.Json;
using EventPipeline.Contracts;
using EventPipeline.Producer.Validation;
using EventPipeline.Shared;
using StackExchange.Redis;

namespace EventPipeline.Producer.Ingest;

/// <summary>
/// The ingest side of delayed and expiring events: holds them in Redis (<see cref="DelayedEventStore"/>, status
/// <c>scheduled</c>) in one transaction before the 202, with the exact lane message the promoter later puts into the
/// lane — a stream entry's fields for the CPU lane, an <see cref="IoEventSubmitted"/> for the I/O lane.
/// </summary>
public sealed class DelayedEventHolder(DelayedEventStore store, RedisReplicaAcknowledgement replicas)
{
    public async Task HoldAsync(IReadOnlyList<ValidatedEvent> events, DateTimeOffset acceptedAt, CancellationToken cancellationToken)
    {
        var traceContext = LaneTraceContext.Inject(Activity.Current);
        var delayed = events.Select(e => new DelayedEvent(e.Id, e.Type, e.Lane, Body(e, acceptedAt, traceContext),
            e.NotBefore ?? acceptedAt, e.ExpiresAt)).ToList();
        try
        {
            // Held in Redis only until due: with Ingest:RedisReplicaAcks, answered once the replicas hold them too.
            var primary = await replicas.PrimaryAsync();
            await store.HoldAsync(delayed, acceptedAt, cancellationToken);
            await replicas.WaitAsync(primary, cancellationToken);
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex) || ex is OperationCanceledException)
        {
            // A transaction whose answer did not come in time may still commit: every event of it is in doubt.
            throw new BrokerUnavailableException(events[0].Lane, ex, [], events);
        }
    }

    private static string Body(ValidatedEvent e, DateTimeOffset acceptedAt, NameValueEntry[] traceContext) => e.Lane == Lanes.Cpu
        // Every value a string: the promoter's script copies them into XADD as they are.
        ? JsonSerializer.Serialize(CpuLaneStreams.NewEntry(e.Id, e.Type, e.Payload, acceptedAt, traceContext)
            .ToDictionary(f => f.Name.ToString(), f => f.Value.ToString()))
        : JsonSerializer.Serialize(new IoEventSubmitted(e.Id, e.Type, e.Payload, acceptedAt, e.Target));
}
