using EventPipeline.Contracts;
using EventPipeline.Producer.Ingest;
using EventPipeline.Producer.Security;
using EventPipeline.Shared;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Mvc;

namespace EventPipeline.Producer.Apis;

public static class EventsApi
{
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
            .ProducesProblem(StatusCodes.Status404NotFound);

        return app;
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

    private static async Task<Results<Ok<EventStatus>, ProblemHttpResult>> GetEventAsync(string id, EventStatusStore statuses)
    {
        var status = await statuses.GetAsync(id);
        return status is null
            ? TypedResults.Problem(statusCode: 404, type: Problems.NotFound, title: "No such event",
                detail: $"No event '{id}' is known (never accepted, or its status expired).")
            : TypedResults.Ok(status);
    }
}

/// <summary>The body of <c>POST /events</c> (documentation only: the body is parsed by <see cref="EventIngest"/>).</summary>
public sealed record SubmitEventRequest(string Type, System.Text.Json.JsonElement Payload, string? Id = null);

/// <summary>The body of <c>POST /events/batch</c>.</summary>
public sealed record SubmitBatchRequest(IReadOnlyList<SubmitEventRequest> Events);
