using System.Diagnostics;
using EventPipeline.Contracts;
using EventPipeline.Producer.Validation;
using EventPipeline.ServiceDefaults;
using EventPipeline.Shared;
using MassTransit;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.Ingest;

/// <summary>The broker did not confirm the write (down, unreachable or too slow): the client gets 503.</summary>
public sealed class BrokerUnavailableException(string lane, Exception inner)
    : Exception($"The {lane} lane's broker did not confirm the write: {inner.Message}", inner)
{
    public string Lane { get; } = lane;
}

/// <summary>Hands accepted events to one lane's broker and returns only once the broker holds them durably.</summary>
public interface ILanePublisher
{
    string Lane { get; }

    Task PublishAsync(IReadOnlyList<ValidatedEvent> events, DateTimeOffset acceptedAt, CancellationToken cancellationToken);
}

/// <summary>
/// CPU lane: one MULTI/EXEC holds every XADD and its <c>accepted</c> status, so a batch lands whole or not at all and
/// no worker can see an entry before its status exists. Redis runs with AOF; the EXEC reply is the confirmation.
/// </summary>
public sealed class CpuLanePublisher(IConnectionMultiplexer redis, EventStatusStore statuses) : ILanePublisher
{
    public string Lane => Lanes.Cpu;

    public async Task PublishAsync(IReadOnlyList<ValidatedEvent> events, DateTimeOffset acceptedAt, CancellationToken cancellationToken)
    {
        using var activity = PipelineTelemetry.ActivitySource.StartActivity($"{CpuLaneStreams.Stream} publish", ActivityKind.Producer);
        activity?.SetTag("messaging.system", "redis");
        activity?.SetTag("messaging.destination.name", CpuLaneStreams.Stream.ToString());
        activity?.SetTag("messaging.operation.type", "send");
        activity?.SetTag("messaging.batch.message_count", events.Count);
        var traceParent = activity?.Id ?? Activity.Current?.Id;

        try
        {
            var transaction = redis.GetDatabase().CreateTransaction();
            var writes = new List<Task>(events.Count * 2);
            foreach (var e in events)
            {
                writes.Add(statuses.MarkAcceptedAsync(transaction, e.Id, e.Type, Lane, acceptedAt));
                writes.Add(transaction.StreamAddAsync(CpuLaneStreams.Stream, CpuLaneStreams.NewEntry(e.Id, e.Type, e.Payload, acceptedAt, traceParent)));
            }

            if (!await transaction.ExecuteAsync().WaitAsync(cancellationToken))
            {
                throw new RedisException("the transaction was not committed");
            }

            await Task.WhenAll(writes);
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or OperationCanceledException)
        {
            activity?.SetStatus(ActivityStatusCode.Error, ex.Message);
            throw new BrokerUnavailableException(Lane, ex);
        }
    }
}

/// <summary>
/// I/O lane: MassTransit publishes with publisher confirms, so the await returns once RabbitMQ has the messages in
/// its durable quorum queue. The status is written after the confirm and never moves a running event backwards.
/// A batch goes out in chunks of <see cref="IngestOptions.IoPublishChunk"/>, each confirmed before the next: the
/// messages one request holds in memory at once stay bounded however large the batch.
/// </summary>
public sealed class IoLanePublisher(IBus bus, EventStatusStore statuses, IOptions<IngestOptions> options, ILogger<IoLanePublisher> logger) : ILanePublisher
{
    public string Lane => Lanes.Io;

    public async Task PublishAsync(IReadOnlyList<ValidatedEvent> events, DateTimeOffset acceptedAt, CancellationToken cancellationToken)
    {
        foreach (var chunk in events.Chunk(options.Value.IoPublishChunk))
        {
            await PublishChunkAsync(chunk, acceptedAt, cancellationToken);
        }
    }

    private async Task PublishChunkAsync(ValidatedEvent[] events, DateTimeOffset acceptedAt, CancellationToken cancellationToken)
    {
        var messages = events.Select(e => new IoEventSubmitted(e.Id, e.Type, e.Payload, acceptedAt, e.Target)).ToList();
        try
        {
            // Messages are persistent by default; the await completes on the publisher confirm.
            // Mandatory: a message the broker cannot route to a queue comes back as an error (503) instead of being
            // confirmed and dropped.
            await bus.PublishBatch(messages, context => context.Mandatory = true, cancellationToken);
        }
        catch (Exception ex)
        {
            throw new BrokerUnavailableException(Lane, ex);
        }

        try
        {
            var batch = new List<Task>(events.Length);
            foreach (var e in events)
            {
                batch.Add(statuses.MarkAcceptedAsync(e.Id, e.Type, Lane, acceptedAt));
            }

            await Task.WhenAll(batch);
        }
        catch (RedisException ex)
        {
            // RabbitMQ holds the events, so they will run; only their status shows up late.
            logger.LogWarning(ex, "Status store unavailable after {Count} I/O events were published; statuses appear when workers run them", events.Length);
        }
    }
}
