using System.Text.Json;
using EventPipeline.Producer.Apis;
using EventPipeline.Producer.Validation;
using EventPipeline.ServiceDefaults;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Ingest;

public sealed class IngestOptions
{
    public int MaxEventBytes { get; set; } = 256 * 1024;
    public int MaxBatchBytes { get; set; } = 4 * 1024 * 1024;
    public int MaxBatchEvents { get; set; } = 1000;

    /// <summary>How long a submission waits for the broker's confirmation before answering 503.</summary>
    public TimeSpan BrokerTimeout { get; set; } = TimeSpan.FromSeconds(5);
}

public sealed record SubmittedEvent(string Id, string Lane, string State);

public sealed record SubmittedBatch(IReadOnlyList<SubmittedEvent> Events);

/// <summary>
/// The path from request body to broker: read within the size limit, parse, validate everything, then publish per
/// lane. Nothing is written to a broker unless the whole request is valid.
/// </summary>
public sealed class EventIngest(
    EventValidator validator,
    IEnumerable<ILanePublisher> publishers,
    PipelineMetrics metrics,
    IOptions<IngestOptions> options,
    ILogger<EventIngest> logger)
{
    private const int BrokerRetryAfterSeconds = 5;
    private static readonly JsonDocumentOptions JsonOptions = new() { MaxDepth = 64, CommentHandling = JsonCommentHandling.Disallow };

    public async Task<IResult> SubmitOneAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        var (document, problem) = await ReadJsonAsync(request, options.Value.MaxEventBytes, cancellationToken);
        if (problem is not null)
        {
            return problem;
        }

        using (document)
        {
            var errors = new Dictionary<string, string[]>();
            var validated = validator.Validate(document!.RootElement, "", errors);
            if (validated is null)
            {
                return ValidationProblem(errors);
            }

            var failure = await PublishAsync([validated], cancellationToken);
            if (failure is not null)
            {
                return failure;
            }

            return TypedResults.Accepted($"/events/{validated.Id}", new SubmittedEvent(validated.Id, validated.Lane, "accepted"));
        }
    }

    public async Task<IResult> SubmitBatchAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        var (document, problem) = await ReadJsonAsync(request, options.Value.MaxBatchBytes, cancellationToken);
        if (problem is not null)
        {
            return problem;
        }

        using (document)
        {
            var root = document!.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("events", out var items) || items.ValueKind != JsonValueKind.Array)
            {
                return ValidationProblem(new() { ["events"] = ["is required and must be an array of events"] });
            }

            var count = items.GetArrayLength();
            if (count == 0 || count > options.Value.MaxBatchEvents)
            {
                return ValidationProblem(new() { ["events"] = [$"must hold 1 to {options.Value.MaxBatchEvents} events (got {count})"] });
            }

            var errors = new Dictionary<string, string[]>();
            var validated = new List<ValidatedEvent>(count);
            var index = 0;
            foreach (var item in items.EnumerateArray())
            {
                if (validator.Validate(item, $"events[{index++}]", errors) is { } ok)
                {
                    validated.Add(ok);
                }
            }

            var duplicates = validated.GroupBy(e => e.Id).Where(g => g.Count() > 1).Select(g => g.Key).ToList();
            if (duplicates.Count > 0)
            {
                errors["events"] = [$"ids must be unique within a batch; repeated: {string.Join(", ", duplicates.Take(10))}"];
            }

            if (errors.Count > 0)
            {
                return ValidationProblem(errors);
            }

            var failure = await PublishAsync(validated, cancellationToken);
            if (failure is not null)
            {
                return failure;
            }

            return TypedResults.Accepted((string?)null, new SubmittedBatch([.. validated.Select(e => new SubmittedEvent(e.Id, e.Lane, "accepted"))]));
        }
    }

    private async Task<IResult?> PublishAsync(IReadOnlyList<ValidatedEvent> events, CancellationToken cancellationToken)
    {
        var acceptedAt = DateTimeOffset.UtcNow;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.Value.BrokerTimeout);
        var held = new List<string>();
        foreach (var publisher in publishers)
        {
            var forLane = events.Where(e => e.Lane == publisher.Lane).ToList();
            if (forLane.Count == 0)
            {
                continue;
            }

            try
            {
                await publisher.PublishAsync(forLane, acceptedAt, timeout.Token);
            }
            catch (BrokerUnavailableException ex)
            {
                logger.LogWarning(ex, "The {Lane} lane's broker did not confirm {Count} events", ex.Lane, forLane.Count);
                var problem = new Microsoft.AspNetCore.Mvc.ProblemDetails
                {
                    Status = StatusCodes.Status503ServiceUnavailable,
                    Type = Problems.BrokerUnavailable,
                    Title = $"The {ex.Lane} lane's broker is unavailable",
                    Detail = "The broker did not confirm the write, so these events are not guaranteed to be held. " +
                             "Retry after the indicated delay; resubmitting with the same event ids is safe.",
                    Extensions = { ["lane"] = ex.Lane },
                };
                if (held.Count > 0)
                {
                    // A batch that spans both lanes: the other lane's broker already holds these.
                    problem.Extensions["heldIds"] = held;
                }

                return new RetryAfterResult(TypedResults.Problem(problem), BrokerRetryAfterSeconds);
            }

            held.AddRange(forLane.Select(e => e.Id));
            foreach (var group in forLane.GroupBy(e => e.Type))
            {
                metrics.Accepted(publisher.Lane, group.Key, group.Count());
            }
        }

        return null;
    }

    private static async Task<(JsonDocument? Document, IResult? Problem)> ReadJsonAsync(HttpRequest request, int maxBytes, CancellationToken cancellationToken)
    {
        if (!request.HasJsonContentType())
        {
            return (null, Problems.Problem(StatusCodes.Status415UnsupportedMediaType, Problems.UnsupportedMediaType,
                "Unsupported media type", "Send the event as JSON with Content-Type: application/json."));
        }

        if (request.ContentLength > maxBytes)
        {
            return (null, TooLarge(maxBytes));
        }

        // Read at most maxBytes + 1 so a body without Content-Length cannot grow past the limit either.
        using var buffer = new MemoryStream();
        var chunk = new byte[16 * 1024];
        int read;
        while ((read = await request.Body.ReadAsync(chunk, cancellationToken)) > 0)
        {
            if (buffer.Length + read > maxBytes)
            {
                return (null, TooLarge(maxBytes));
            }

            buffer.Write(chunk, 0, read);
        }

        try
        {
            return (JsonDocument.Parse(buffer.GetBuffer().AsMemory(0, (int)buffer.Length), JsonOptions), null);
        }
        catch (JsonException ex)
        {
            return (null, Problems.Problem(StatusCodes.Status400BadRequest, Problems.MalformedJson, "The body is not valid JSON", ex.Message));
        }
    }

    private static IResult TooLarge(int maxBytes) =>
        Problems.Problem(StatusCodes.Status413PayloadTooLarge, Problems.PayloadTooLarge, "The body is too large", $"The limit is {maxBytes} bytes.");

    private static IResult ValidationProblem(Dictionary<string, string[]> errors) =>
        TypedResults.ValidationProblem(errors, type: Problems.Validation, title: "The event is not valid");
}

/// <summary>Adds <c>Retry-After</c> to a result (503 broker unavailable, 429 backpressure).</summary>
public sealed class RetryAfterResult(IResult inner, int seconds) : IResult
{
    public Task ExecuteAsync(HttpContext httpContext)
    {
        httpContext.Response.Headers.RetryAfter = seconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return inner.ExecuteAsync(httpContext);
    }
}
