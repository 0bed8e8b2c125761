using EventPipeline.Shared;
namespace EventPipeline.Worker.Io.Delivery;

/// <summary>
/// Writes a final status (<c>succeeded</c>, <c>dead</c>) before the message that carries the event is acknowledged or
/// moved: while Redis is out it keeps trying with a capped backoff, holding the message unacknowledged, so the
/// broker never lets go of an event whose outcome is not recorded. Cancelled only when the bus stops: the message then
/// returns to the queue when the channel closes (a redelivery may repeat a delivery; it carries the same
/// <c>Idempotency-Key</c>). At most the endpoint's concurrency limit of messages wait this way. A refusal that is not an
/// outage (<see cref="RedisFailures.IsOutage"/>) is logged as an error and not retried.
/// </summary>
public static class FinalStatusWrite
{
    public static async Task UntilWrittenAsync(Func<Task> write, string eventId, string state, ILogger logger, CancellationToken cancellationToken)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await write();
                return;
            }
            catch (Exception ex) when (RedisFailures.IsOutage(ex))
            {
                var delay = RetryDelay(attempt);
                logger.LogWarning("Status {State} of event {EventId} not written (attempt {Attempt}): the status store is unavailable ({Error}); trying again in {Delay}",
                    state, eventId, attempt, ex.Message, delay);
                await Task.Delay(delay, cancellationToken);
            }
            catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
            {
                // Not an outage (a key of the wrong type, a script error): no retry cures it, and retrying held the
                // delivery slot for good. Let the message go without its status: a success is acknowledged (throwing
                // would make MassTransit repeat the downstream call), a dead event still moves to events-io_error,
                // where an operator sees it.
                logger.LogError(ex, "Status {State} of event {EventId} cannot be written: Redis refused it ({Error}), which no retry cures; the message goes on without it",
                    state, eventId, ex.Message);
                return;
            }
        }
    }

    /// <summary>250 ms, doubling, at most 2 s: quick after a blip, cheap through a long outage.</summary>
    private static TimeSpan RetryDelay(int attempt) =>
        TimeSpan.FromMilliseconds(Math.Min(2000, 250 * Math.Pow(2, Math.Min(attempt - 1, 4))));
}
