using System.Globalization;
using EventPipeline.Producer.DeadLetters;
using EventPipeline.Producer.Ingest;
using EventPipeline.Producer.Security;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Apis;

/// <summary>Dead letters of both lanes, one shape: list, inspect, replay one or all, delete. Admin key only.</summary>
public static class DeadLettersApi
{
    public static IEndpointRouteBuilder MapDeadLettersApi(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/dead-letters/{lane}").WithTags("Dead letters").RequireApiKey(ApiKeyScope.Admin)
            .ProducesProblem(StatusCodes.Status401Unauthorized)
            .ProducesProblem(StatusCodes.Status403Forbidden)
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblem(StatusCodes.Status503ServiceUnavailable);

        group.MapGet("/", ListAsync)
            .WithName("ListDeadLetters")
            .WithSummary("List a lane's dead letters (paged)")
            .WithDescription("Oldest first. `limit` (default 50, at most 500) and `after` (the `next` of the previous page; anything else is a 400). "
                + "409 `dead-letter-busy` with `Retry-After` when the lane's other dead-letter reads kept it waiting past DeadLetters:ScanQueueTimeout (io).")
            .Produces<DeadLetterPage>()
            .ProducesProblem(StatusCodes.Status409Conflict)
            .ProducesValidationProblem();

        group.MapGet("/{id}", GetAsync)
            .WithName("GetDeadLetter")
            .WithSummary("Inspect one dead letter: the event, its last error with stack trace, and its error history")
            .WithDescription("409 `dead-letter-busy` with `Retry-After` when the lane's other dead-letter reads kept it waiting past DeadLetters:ScanQueueTimeout (io).")
            .Produces<DeadLetter>()
            .ProducesProblem(StatusCodes.Status409Conflict);

        group.MapPost("/{id}/replay", ReplayAsync)
            .WithName("ReplayDeadLetter")
            .WithSummary("Send one dead letter back to its lane")
            .WithDescription("The event keeps its id and error history and starts its attempts afresh. Answers 202 once the lane's broker holds it again; "
                + "200 with state `succeeded` when the event had already succeeded (its stale dead letter is dropped, nothing runs again).")
            .Produces<DeadLetterReplayed>(StatusCodes.Status202Accepted)
            .Produces<DeadLetterReplayed>()
            .ProducesProblem(StatusCodes.Status409Conflict);

        group.MapPost("/replay", ReplayAllAsync)
            .WithName("ReplayAllDeadLetters")
            .WithSummary("Send a lane's dead letters back to it, oldest first, up to a bound")
            .WithDescription("`max` (default and upper bound: DeadLetters:ReplayAllLimit, 1000). Only dead letters present when the call began are replayed; "
                + "one that dies again meanwhile waits for the next call. Reports how many were replayed, how many were dropped because their event had already succeeded, and how many remain (counted by the call before another operation starts; null when the broker gave no count).")
            .Produces<DeadLettersReplayed>()
            .ProducesProblem(StatusCodes.Status409Conflict)
            .ProducesValidationProblem();

        group.MapDelete("/", DeleteAllAsync)
            .WithName("DeleteAllDeadLetters")
            .WithSummary("Delete a lane's dead letters for good, oldest first, up to a bound")
            .WithDescription("`max` (default and upper bound: DeadLetters:ReplayAllLimit, 1000). Only dead letters present when the call began are deleted; "
                + "one that dies meanwhile is kept for a look. Reports how many were deleted and how many remain "
                + "(counted by the call before another operation starts, so looping until 0 is safe; null when the broker gave no count).")
            .Produces<DeadLettersDeleted>()
            .ProducesProblem(StatusCodes.Status409Conflict)
            .ProducesValidationProblem();

        group.MapDelete("/{id}", DeleteAsync)
            .WithName("DeleteDeadLetter")
            .WithSummary("Delete one dead letter for good")
            .Produces(StatusCodes.Status204NoContent)
            .ProducesProblem(StatusCodes.Status409Conflict);

        return app;
    }

    private static Task<IResult> ListAsync(string lane, string? limit, string? after, DeadLetterLanes lanes, IOptions<DeadLetterOptions> options, CancellationToken ct) =>
        lanes.RunAsync(lane, async store =>
        {
            var size = options.Value.DefaultPageSize;
            if (limit is not null && (!int.TryParse(limit, NumberStyles.None, CultureInfo.InvariantCulture, out size) || size < 1 || size > options.Value.MaxPageSize))
            {
                return Invalid("limit", $"must be a whole number from 1 to {options.Value.MaxPageSize}");
            }

            // A malformed cursor is the caller's mistake, not a broker failure.
            if (after is not null && (after.Length > 200 || !store.IsCursor(after)))
            {
                return Invalid("after", "is not a cursor this API handed out: pass the 'next' of the previous page");
            }

            return TypedResults.Ok(await store.ListAsync(after, size, ct));
        });

    private static Task<IResult> GetAsync(string lane, string id, DeadLetterLanes lanes, CancellationToken ct) =>
        lanes.RunAsync(lane, async store => await store.GetAsync(id, ct) is { } dead ? TypedResults.Ok(dead) : NotFound(lane, id));

    private static Task<IResult> ReplayAsync(string lane, string id, DeadLetterLanes lanes, CancellationToken ct) =>
        lanes.RunAsync(lane, async store => await store.ReplayAsync(id, ct) switch
        {
            ReplayOutcome.Replayed => TypedResults.Accepted($"/events/{id}", new DeadLetterReplayed(id, store.Lane, Contracts.EventStates.Accepted)),
            // Nothing went back to the lane: the event had already succeeded and its stale dead letter is gone.
            ReplayOutcome.AlreadySucceeded => TypedResults.Ok(new DeadLetterReplayed(id, store.Lane, Contracts.EventStates.Succeeded)),
            _ => NotFound(lane, id),
        });

    private static Task<IResult> ReplayAllAsync(string lane, string? max, DeadLetterLanes lanes, IOptions<DeadLetterOptions> options, CancellationToken ct) =>
        lanes.RunAsync(lane, async store =>
        {
            var bound = options.Value.ReplayAllLimit;
            if (max is not null && (!int.TryParse(max, NumberStyles.None, CultureInfo.InvariantCulture, out bound) || bound < 1 || bound > options.Value.ReplayAllLimit))
            {
                return Invalid("max", $"must be a whole number from 1 to {options.Value.ReplayAllLimit}");
            }

            var result = await store.ReplayAllAsync(bound, ct);
            // Counted by the operation before it let the next one start: a count taken after could miss what a later scan holds.
            return TypedResults.Ok(new DeadLettersReplayed(store.Lane, result.Replayed, result.Remaining, result.AlreadySucceeded));
        });

    private static Task<IResult> DeleteAllAsync(string lane, string? max, DeadLetterLanes lanes, IOptions<DeadLetterOptions> options, CancellationToken ct) =>
        lanes.RunAsync(lane, async store =>
        {
            if (ParseBound(max, options.Value.ReplayAllLimit) is not { } bound)
            {
                return Invalid("max", $"must be a whole number from 1 to {options.Value.ReplayAllLimit}");
            }

            var result = await store.DeleteAllAsync(bound, ct);
            return TypedResults.Ok(new DeadLettersDeleted(store.Lane, result.Deleted, result.Remaining));
        });

    /// <summary>The bound of a bulk operation: <paramref name="limit"/> when absent, null when not a whole number from 1 to it.</summary>
    private static int? ParseBound(string? max, int limit) =>
        max is null ? limit
        : int.TryParse(max, NumberStyles.None, CultureInfo.InvariantCulture, out var bound) && bound >= 1 && bound <= limit ? bound
        : null;

    private static Task<IResult> DeleteAsync(string lane, string id, DeadLetterLanes lanes, CancellationToken ct) =>
        lanes.RunAsync(lane, async store => await store.DeleteAsync(id, ct) ? TypedResults.NoContent() : NotFound(lane, id));

    private static IResult NotFound(string lane, string id) =>
        Problems.Problem(StatusCodes.Status404NotFound, Problems.NotFound, "No such dead letter", $"The {lane} lane holds no dead letter for event '{id}'.");

    private static IResult Invalid(string field, string message) =>
        TypedResults.ValidationProblem(new Dictionary<string, string[]> { [field] = [message] }, type: Problems.Validation, title: "The request is not valid");
}

/// <summary>Finds a lane's dead-letter store and turns its failures into ProblemDetails.</summary>
public sealed class DeadLetterLanes(IEnumerable<IDeadLetterLane> lanes, ILogger<DeadLetterLanes> logger)
{
    private const int RetryAfterSeconds = 5;

    public async Task<IResult> RunAsync(string lane, Func<IDeadLetterLane, Task<IResult>> operation)
    {
        var store = lanes.FirstOrDefault(l => l.Lane == lane);
        if (store is null)
        {
            return Problems.Problem(StatusCodes.Status404NotFound, Problems.UnknownLane, "No such lane",
                $"Lanes are: {string.Join(", ", lanes.Select(l => l.Lane))}.");
        }

        try
        {
            return await operation(store);
        }
        catch (DeadLetterBusyException ex)
        {
            return new HeaderResult(Problems.Problem(StatusCodes.Status409Conflict, Problems.DeadLetterBusy, "Another dead-letter operation is running", ex.Message),
                ("Retry-After", "1"));
        }
        catch (DeadLetterStoreUnavailableException ex)
        {
            logger.LogWarning(ex, "Dead-letter store of the {Lane} lane is unavailable", ex.Lane);
            return Problems.Unavailable(ex.Lane, $"The {ex.Lane} lane's broker is unavailable",
                "The dead-letter store could not be read or changed; nothing was changed unless the broker confirmed it.", RetryAfterSeconds);
        }
    }
}
