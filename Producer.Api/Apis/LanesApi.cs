using EventPipeline.Producer.Monitoring;
using EventPipeline.Producer.Security;
using EventPipeline.Shared;

namespace EventPipeline.Producer.Apis;

public static class LanesApi
{
    public static IEndpointRouteBuilder MapLanesApi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/lanes", GetLanesAsync)
            .WithTags("Lanes")
            .WithName("GetLanes")
            .WithSummary("Backlog of each lane: depth, lag, pending, oldest pending age, dead letters, consumers, scheduled")
            .WithDescription("Read from the brokers on each call. `pending` and `oldestPendingAgeMs` are null where the broker cannot tell them " +
                             "(RabbitMQ keeps no delivery time; its unacknowledged count needs the Prometheus plugin).")
            .Produces<LanesResponse>()
            .ProducesProblem(StatusCodes.Status401Unauthorized)
            .ProducesProblem(StatusCodes.Status503ServiceUnavailable)
            .RequireApiKey(ApiKeyScope.Submit);
        return app;
    }

    private static async Task<IResult> GetLanesAsync(LaneMonitor monitor, DelayedEventStore delayed, CancellationToken ct)
    {
        try
        {
            var lanes = await monitor.ReadAsync(ct);
            IReadOnlyDictionary<string, long>? scheduled = null;
            try
            {
                scheduled = await delayed.CountAsync();
            }
            catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
            {
                // left out (null) rather than shown as 0: an unreadable count must not look like an empty one
            }

            return TypedResults.Ok(new LanesResponse([.. lanes.Select(l => LaneView.From(l) with { Scheduled = scheduled?.GetValueOrDefault(l.Lane) })]));
        }
        catch (LaneUnavailableException ex)
        {
            return Problems.Unavailable(ex.Lane, $"The {ex.Lane} lane's broker is unavailable", "Its backlog could not be read in time.", 5);
        }
    }
}

public sealed record LanesResponse(IReadOnlyList<LaneView> Lanes);

/// <param name="Depth">events in the lane not yet finished (waiting, running, or waiting for a retry).</param>
/// <param name="Lag">events no consumer has picked up yet; backpressure compares this with its limit.</param>
/// <param name="Pending">delivered to a consumer and not yet acknowledged; null when the broker cannot tell.</param>
/// <param name="OldestPendingAgeMs">age of the oldest unacknowledged delivery; null when the broker cannot tell.</param>
/// <param name="Scheduled">events held for a later start (notBefore/delay), not yet in the lane.</param>
public sealed record LaneView(string Name, long Depth, long Lag, long? Pending, long? OldestPendingAgeMs, long DeadLetters, long Consumers, long? Scheduled = null)
{
    public static LaneView From(LaneState s) => new(s.Lane, s.Depth, s.Lag, s.Pending, s.OldestPendingAgeMs, s.DeadLetters, s.Consumers);
}
