using EventPipeline.Producer.Ingest;
using EventPipeline.Producer.Security;
using EventPipeline.ServiceDefaults;

namespace EventPipeline.Producer.Apis;

public static class LanesApi
{
    public static IEndpointRouteBuilder MapLanesApi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/lanes", async (LaneMonitor monitor, CancellationToken ct) =>
            {
                var lanes = await monitor.ReadAsync(ct);
                return TypedResults.Ok(new LanesResponse([.. lanes.Select(LaneView.From)]));
            })
            .WithTags("Lanes")
            .WithName("GetLanes")
            .WithSummary("Backlog of each lane: depth, lag, pending, oldest pending age, dead letters, consumers")
            .RequireApiKey(ApiKeyScope.Submit);
        return app;
    }
}

public sealed record LanesResponse(IReadOnlyList<LaneView> Lanes);

public sealed record LaneView(string Name, long Depth, long Lag, long Pending, long OldestPendingAgeMs, long DeadLetters, long Consumers)
{
    public static LaneView From(LaneSnapshot s) =>
        new(s.Lane, s.Depth, s.Lag, s.Pending, (long)(s.OldestPendingAgeSeconds * 1000), s.DeadLetters, s.Consumers);
}
