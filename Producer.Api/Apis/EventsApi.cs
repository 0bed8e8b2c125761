using EventPipeline.Contracts;
using EventPipeline.Producer.Ingest;
using EventPipeline.Producer.Security;
using EventPipeline.Shared;
using Microsoft.AspNetCore.Mvc;

namespace EventPipeline.Producer.Apis;

public static class EventsApi
{
    private const int StatusRetryAfterSeconds = 2;

    public static IEndpointRouteBuilder MapEventsApi(this IEndpointRouteBuilder app)
    {
        var events = app.MapGroup("/events").WithTags("Events").RequireApiKey(ApiKeyScope.Submit);

        events.MapPost("/", (HttpRequest request, EventIngest ingest, CancellationToken ct) => ingest.SubmitOneAsync(request, ct))
            .WithName("SubmitEvent")
            .WithSummary("Submit one event")
            .WithDescription("Validates the event, routes it by type to a lane and answers 202 once the lane's broker holds it durably.")
            .Accepts<SubmitEventRequest>("application/json")
            .Produces<SubmittedEvent>(StatusCodes.Status202Accepted)
            .Produces<SubmittedEvent>(StatusCodes.Status200OK)
            .ProducesSubmissionProblems();

        events.MapPost("/batch", (HttpRequest request, EventIngest ingest, CancellationToken ct) => ingest.SubmitBatchAsync(request, ct))
            .WithName("SubmitEventBatch")
            .WithSummary("Submit many events at once")
            .WithDescription("All-or-nothing validation: one invalid event rejects the whole batch and nothing is enqueued.")
            .Accepts<SubmitBatchRequest>("application/json")
            .Produces<SubmittedBatch>(StatusCodes.Status202Accepted)
            .Produces<SubmittedBatch>(StatusCodes.Status200OK)
            .ProducesSubmissionProblems();

        events.MapGet("/{id}", GetEventAsync)
            .WithName("GetEvent")
            .WithSummary("Look up an event's state, attempts, error, result and timings")
            .Produces<EventStatus>()
            .ProducesProblem(StatusCodes.Status401Unauthorized)
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblem(StatusCodes.Status503ServiceUnavailable);

        events.MapPost("/{id}/cancel", CancelEventAsync)
            .WithName("CancelEvent")
            .WithSummary("Cancel an event that has not started")
            .WithDescription("An event that is accepted, scheduled or waiting for a retry becomes `cancelled` and is never run, on either lane. " +
                             "One that started (processing) or finished answers 409 with its state; cancelling a cancelled event again answers 200.")
            .Produces<EventStatus>()
            .ProducesProblem(StatusCodes.Status401Unauthorized)
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblem(StatusCodes.Status409Conflict)
            .ProducesProblem(StatusCodes.Status503ServiceUnavailable);

        return app;
    }

    private static async Task<IResult> CancelEventAsync(string id, EventStatusStore statuses, ILogger<EventStatusStore> logger)
    {
        try
        {
            var (outcome, state) = await statuses.CancelAsync(id);
            switch (outcome)
            {
                case CancelOutcome.NotFound:
                    return TypedResults.Problem(statusCode: 404, type: Problems.NotFound, title: "No such event",
                        detail: $"No event '{id}' is known (never accepted, or its status expired).");
                case CancelOutcome.Started:
                    var problem = new ProblemDetails
                    {
                        Status = StatusCodes.Status409Conflict,
                        Type = Problems.EventAlreadyStarted,
                        Title = "The event has already started",
                        Detail = $"Event '{id}' is {state}: only an event that has not started (accepted, scheduled, retrying) can be cancelled.",
                        Extensions = { ["state"] = state },
                    };
                    return TypedResults.Problem(problem);
            }

            if (outcome == CancelOutcome.Cancelled)
            {
                logger.LogInformation("Event {EventId} cancelled while {State}", id, state);
            }

            return TypedResults.Ok(await statuses.GetAsync(id));
        }
        catch (Exception ex) when (RedisFailures.IsOutage(ex))
        {
            logger.LogWarning(ex, "The status store did not answer cancelling event {EventId}", id);
            // The cancel script may have committed before the failure (its reply, or the read-back after it, was lost).
            return Problems.Unavailable(null, "The status store (Redis) is unavailable",
                "The event may or may not have been cancelled: Redis failed while the cancel ran. Retrying the cancel is safe " +
                "(a repeated cancel answers 200 with state cancelled); or read the event with GET /events/{id}.", StatusRetryAfterSeconds);
        }
    }

    /// <summary>What a submission can answer besides its 202/200: the same for one event and for a batch.</summary>
    private static RouteHandlerBuilder ProducesSubmissionProblems(this RouteHandlerBuilder endpoint) => endpoint
        .ProducesValidationProblem()
        .ProducesProblem(StatusCodes.Status401Unauthorized)
        .ProducesProblem(StatusCodes.Status409Conflict)
        .ProducesProblem(StatusCodes.Status413PayloadTooLarge)
        .ProducesProblem(StatusCodes.Status415UnsupportedMediaType)
        .ProducesProblem(StatusCodes.Status422UnprocessableEntity)
        .ProducesProblem(StatusCodes.Status429TooManyRequests)
        .ProducesProblem(StatusCodes.Status503ServiceUnavailable);

    private static async Task<IResult> GetEventAsync(string id, EventStatusStore statuses, ILogger<EventStatusStore> logger)
    {
        EventStatus? status;
        try
        {
            status = await statuses.GetAsync(id);
        }
        catch (Exception ex) when (RedisFailures.IsOutage(ex))
        {
            // RedisTimeoutException is a TimeoutException, not a RedisException: a paused or slow Redis lands here too.
            logger.LogWarning(ex, "The status store did not answer for event {EventId}", id);
            return Problems.Unavailable(null, "The status store (Redis) is unavailable",
                "The event's status could not be read. Nothing about the event changed; retry after the indicated delay.", StatusRetryAfterSeconds);
        }

        return status is null
            ? TypedResults.Problem(statusCode: 404, type: Problems.NotFound, title: "No such event",
                detail: $"No event '{id}' is known (never accepted, or its status expired).")
            : TypedResults.Ok(status);
    }
}

/// <summary>The body of <c>POST /events</c> (documentation only: the body is parsed by <see cref="EventIngest"/>).</summary>
/// <param name="NotBefore">RFC 3339: the event does not start before this time (state <c>scheduled</c> until then).</param>
/// <param name="Delay">seconds from now; instead of <paramref name="NotBefore"/>.</param>
/// <param name="ExpiresAt">RFC 3339: not started by then, the event is not run and ends <c>expired</c>.</param>
public sealed record SubmitEventRequest(string Type, System.Text.Json.JsonElement Payload, string? Id = null,
    DateTimeOffset? NotBefore = null, double? Delay = null, DateTimeOffset? ExpiresAt = null);

/// <summary>The body of <c>POST /events/batch</c>.</summary>
public sealed record SubmitBatchRequest(IReadOnlyList<SubmitEventRequest> Events);
