using EventPipeline.Contracts;
using EventPipeline.Producer.Validation;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Ingest;

/// <summary>
/// I/O lane: <see cref="IoEventPublisher"/> publishes with publisher confirms, so the await returns once RabbitMQ has
/// the messages in its durable quorum queue. The status is written after the confirm and never moves a running event
/// backwards. A batch goes out in chunks of <see cref="IngestOptions.IoPublishChunk"/>, each confirmed before the next:
/// the messages one request holds in memory at once stay bounded however large the batch. When a chunk fails, the
/// chunks before it are reported as confirmed and that chunk as in doubt (the 503's <c>uncertainIds</c>) — also when this
/// request wrote none of it (no connection, no channel in time): an earlier try of the same ids may have left them with the
/// broker unconfirmed, so "not written now" is not "not held". The publisher replaces the channel it failed on, so the
/// next request does not inherit a refusal.
/// </summary>
public sealed class IoLanePublisher(IoEventPublisher publisher, EventStatusStore statuses, IOptions<IngestOptions> options, ILogger<IoLanePublisher> logger) : ILanePublisher
{
    public string Lane => Lanes.Io;

    public async Task PublishAsync(IReadOnlyList<ValidatedEvent> events, DateTimeOffset acceptedAt, CancellationToken cancellationToken)
    {
        var confirmed = new List<ValidatedEvent>(events.Count);
        var statusWrites = new List<Task>(events.Count);
        try
        {
            foreach (var chunk in events.Chunk(options.Value.IoPublishChunk))
            {
                var messages = Array.ConvertAll(chunk, e => new IoEventSubmitted(e.Id, e.Type, e.Payload, acceptedAt, e.Target));
                try
                {
                    await publisher.PublishAsync(messages, cancellationToken);
                }
                catch (Exception ex)
                {
                    throw new BrokerUnavailableException(Lane, ex, confirmed, chunk);
                }

                confirmed.AddRange(chunk);
                // Not awaited per chunk: a slow status store must not hold back the next chunk's publish.
                statusWrites.AddRange(chunk.Select(e => MarkAccepted(e, acceptedAt)));
            }
        }
        finally
        {
            await AwaitStatusWritesAsync(statusWrites, logger);
        }
    }

    /// <summary>
    /// The client can also throw a failure synchronously from the call (StackExchange.Redis#2692's race among them):
    /// kept in the task, so that it is handled with the other status writes instead of leaving the publish.
    /// </summary>
    private Task MarkAccepted(ValidatedEvent e, DateTimeOffset acceptedAt)
    {
        try
        {
            return statuses.MarkAcceptedAsync(e.Id, e.Type, Lane, acceptedAt);
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
        {
            return Task.FromException(ex);
        }
    }

    internal static async Task AwaitStatusWritesAsync(IReadOnlyCollection<Task> writes, ILogger logger)
    {
        try
        {
            await Task.WhenAll(writes);
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
        {
            // RabbitMQ holds the events, so they will run; only their status shows up late. Whatever way Redis failed (a
            // timeout, or the client's writer-completed race), the answer stays the 202 naming their ids: a 503 without
            // them made a keyless client publish them again under new ids.
            logger.LogWarning(ex, "Status store unavailable after {Count} I/O events were published; statuses appear when workers run them", writes.Count);
        }
    }
}
