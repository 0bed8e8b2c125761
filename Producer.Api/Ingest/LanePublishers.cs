using System.Diagnostics;
using EventPipeline.Contracts;
using EventPipeline.Producer.Validation;
using EventPipeline.ServiceDefaults;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.Ingest;

/// <summary>
/// The broker did not confirm the write (down, unreachable or too slow): the client gets 503. <see cref="Confirmed"/>
/// are the lane's events the broker confirmed before the failure (they will run); <see cref="Uncertain"/> were in
/// flight when it failed (the broker may or may not hold them); the lane's other events were not sent.
/// </summary>
public sealed class BrokerUnavailableException(string lane, Exception inner, IReadOnlyList<ValidatedEvent> confirmed, IReadOnlyList<ValidatedEvent> uncertain)
    : Exception($"The {lane} lane's broker did not confirm the write: {inner.Message}", inner)
{
    public string Lane { get; } = lane;

    public IReadOnlyList<ValidatedEvent> Confirmed { get; } = confirmed;

    public IReadOnlyList<ValidatedEvent> Uncertain { get; } = uncertain;
}

/// <summary>Hands accepted events to one lane's broker and returns only once the broker holds them durably.</summary>
public interface ILanePublisher
{
    string Lane { get; }

    Task PublishAsync(IReadOnlyList<ValidatedEvent> events, DateTimeOffset acceptedAt, CancellationToken cancellationToken);
}

/// <summary>
/// CPU lane: one MULTI/EXEC holds every XADD and its <c>accepted</c> status, so a batch lands whole or not at all and
/// no worker can see an entry before its status exists. Redis runs with AOF; the EXEC reply is the confirmation, and
/// with <see cref="IngestOptions.RedisReplicaAcks"/> &gt; 0 also <c>WAIT</c>'s count of replicas holding it (fewer → 503
/// with every event uncertain), so a primary's death after the 202 cannot take the events with it.
/// </summary>
public sealed class CpuLanePublisher(IConnectionMultiplexer redis, EventStatusStore statuses, RedisReplicaAcknowledgement replicas) : ILanePublisher
{
    public string Lane => Lanes.Cpu;

    public async Task PublishAsync(IReadOnlyList<ValidatedEvent> events, DateTimeOffset acceptedAt, CancellationToken cancellationToken)
    {
        using var activity = PipelineTelemetry.ActivitySource.StartActivity($"{CpuLaneStreams.Stream} publish", ActivityKind.Producer);
        activity?.SetTag("messaging.system", "redis");
        activity?.SetTag("messaging.destination.name", CpuLaneStreams.Stream.ToString());
        activity?.SetTag("messaging.operation.type", "send");
        activity?.SetTag("messaging.batch.message_count", events.Count);
        var traceContext = LaneTraceContext.Inject(activity ?? Activity.Current);

        try
        {
            // Identified before the write: the replicas' acknowledgement must come from the server the EXEC went to.
            var primary = await replicas.PrimaryAsync();
            var transaction = redis.GetDatabase().CreateTransaction();
            var writes = new List<Task>(events.Count * 2);
            foreach (var e in events)
            {
                writes.Add(statuses.MarkAcceptedAsync(transaction, e.Id, e.Type, Lane, acceptedAt));
                writes.Add(transaction.StreamAddAsync(CpuLaneStreams.Stream, CpuLaneStreams.NewEntry(e.Id, e.Type, e.Payload, acceptedAt, traceContext)));
            }

            if (!await transaction.ExecuteAsync().WaitAsync(cancellationToken))
            {
                throw new RedisException("the transaction was not committed");
            }

            await Task.WhenAll(writes);
            await replicas.WaitAsync(primary, cancellationToken);
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or OperationCanceledException)
        {
            // A transaction whose answer did not come in time may still commit: every event of it is in doubt.
            activity?.SetStatus(ActivityStatusCode.Error, ex.Message);
            throw new BrokerUnavailableException(Lane, ex, [], events);
        }
    }
}
