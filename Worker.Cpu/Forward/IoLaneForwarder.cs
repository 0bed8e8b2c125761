using EventPipeline.Contracts;
using EventPipeline.Shared;
using EventPipeline.Worker.Cpu.Lane;
using EventPipeline.Worker.Cpu.Work;
using Microsoft.Extensions.Options;

namespace EventPipeline.Worker.Cpu.Forward;

/// <summary>Hands a CPU event's result on to the next stage. Called after the work, before the stream entry is acknowledged.</summary>
public interface INextStageForwarder
{
    Task ForwardAsync(LaneEntry entry, NextStage next, string result);
}

/// <summary>
/// Publishes the next stage to the I/O lane (<see cref="IoEventPublisher"/>: publisher confirms, <c>mandatory</c> so a
/// publish that reaches no queue fails, a channel that failed replaced and the lane declared again, so the retry of a
/// forward that found no queue finds one), then marks its status <c>accepted</c>. Only after both does the caller acknowledge the
/// CPU entry, so a failed or unroutable hand-off is retried like any failed attempt; a crash in between runs the CPU event
/// again, and the derived id (<c>{id}.then</c>) makes the repeated hand-off the same I/O event (same status hash,
/// same downstream <c>Idempotency-Key</c>). Publishing inside the handler's activity carries the trace on.
/// </summary>
public sealed class IoLaneForwarder(IoEventPublisher publisher, EventStatusStore statuses, IOptions<CpuLaneOptions> options, ILogger<IoLaneForwarder> logger)
    : INextStageForwarder
{
    public async Task ForwardAsync(LaneEntry entry, NextStage next, string result)
    {
        var id = NextStage.DerivedId(entry.Id);
        var acceptedAt = DateTimeOffset.UtcNow;
        var message = new IoEventSubmitted(id, next.Type, next.BodyWith(entry.Id, entry.Type, result), acceptedAt, next.Target);
        using (var timeout = new CancellationTokenSource(options.Value.ForwardTimeout))
        {
            // Completes on RabbitMQ's publisher confirm: from here the I/O lane holds the event durably. The publish is
            // mandatory: a message no queue takes throws here and fails this attempt, instead of being confirmed and
            // dropped while the CPU entry is acknowledged. A nack fails it too, and the retry gets a fresh channel.
            await publisher.PublishAsync([message], timeout.Token);
        }

        await statuses.MarkAcceptedAsync(id, next.Type, Lanes.Io, acceptedAt);
        logger.LogInformation("Event {EventId} handed its result on to the I/O lane as {NextEventId} ({NextType})", entry.Id, id, next.Type);
    }
}

/// <summary>Used when this worker has no RabbitMQ connection: an event asking for a next stage cannot finish here.</summary>
public sealed class NoIoLaneForwarder : INextStageForwarder
{
    public Task ForwardAsync(LaneEntry entry, NextStage next, string result) =>
        throw new PermanentEventException("payload.then needs the I/O lane, but this worker has no ConnectionStrings:rabbitmq");
}
