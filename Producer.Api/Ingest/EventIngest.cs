using System.Net;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using EventPipeline.Contracts;
using EventPipeline.Producer.Apis;
using EventPipeline.Producer.Security;
using EventPipeline.Shared;
using Microsoft.AspNetCore.Mvc;
using StackExchange.Redis;
using EventPipeline.Producer.Validation;
using EventPipeline.ServiceDefaults;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Ingest;

/// <remarks>Ranges are checked when the API starts (a bad setting fails the start naming it). A body is read into one
/// array: 1 GiB is the most an array pool bucket holds and far past any sane request, and it keeps sizes derived from
/// these limits (a limit + 1) within an int.</remarks>
public sealed class IngestOptions
{
    public const int MaxBodyBytes = 1024 * 1024 * 1024;

    [System.ComponentModel.DataAnnotations.Range(1, MaxBodyBytes)]
    public int MaxEventBytes { get; set; } = 256 * 1024;

    [System.ComponentModel.DataAnnotations.Range(1, MaxBodyBytes)]
    public int MaxBatchBytes { get; set; } = 4 * 1024 * 1024;

    [System.ComponentModel.DataAnnotations.Range(1, 100_000)]
    public int MaxBatchEvents { get; set; } = 1000;

    /// <summary>
    /// I/O-lane messages published (and confirmed) at once per request: bounds the memory a large batch holds.
    /// </summary>
    [System.ComponentModel.DataAnnotations.Range(1, 10_000)]
    public int IoPublishChunk { get; set; } = 100;

    /// <summary>How long a submission waits for the broker's confirmation before answering 503.</summary>
    public TimeSpan BrokerTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// CPU lane: replicas that must hold a write (Redis <c>WAIT</c>) before it is answered 202; 0 trusts the primary
    /// alone (a failover can lose what it had not yet replicated). See docs/ha.md.
    /// </summary>
    [System.ComponentModel.DataAnnotations.Range(0, 100)]
    public int RedisReplicaAcks { get; set; }

    /// <summary>How long <c>WAIT</c> waits for <see cref="RedisReplicaAcks"/> replicas before the answer is 503.</summary>
    public TimeSpan RedisReplicaAckTimeout { get; set; } = TimeSpan.FromSeconds(2);
}

/// <param name="Duplicate">true when this event was accepted before (same id or Idempotency-Key) and nothing was enqueued now.</param>
public sealed record SubmittedEvent(
    string Id,
    string Lane,
    string State,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] bool? Duplicate = null);

public sealed record SubmittedBatch(IReadOnlyList<SubmittedEvent> Events);

/// <summary>
/// The path from request body to broker: read within the size limit, parse, validate everything, check the lanes'
/// backpressure, reserve ids against repeats, then publish per lane. Nothing is written to a broker unless the whole
/// request is valid, and nothing is written twice for a repeated request.
/// </summary>
public sealed class EventIngest(
    EventValidator validator,
    IEnumerable<ILanePublisher> publishers,
    DelayedEventHolder delayed,
    IdempotencyGuard idempotency,
    CpuLaneSubmission cpuLane,
    RedisReplicaAcknowledgement replicas,
    Backpressure backpressure,
    PipelineMetrics metrics,
    IOptions<IngestOptions> options,
    IOptions<Microsoft.AspNetCore.Http.Json.JsonOptions> jsonOptions,
    ILogger<EventIngest> logger)
{
    // The 202's writer, resolved once from the app's JSON options (TypedResults.Accepted resolved the options and
    // created a logger on every request; docs/benchmarks-history.md, "Session 8: single POSTs").
    private readonly System.Text.Json.Serialization.Metadata.JsonTypeInfo<SubmittedEvent> _acceptedJson =
        (System.Text.Json.Serialization.Metadata.JsonTypeInfo<SubmittedEvent>)jsonOptions.Value.SerializerOptions.GetTypeInfo(typeof(SubmittedEvent));

    public const string ReplayedHeader = "Idempotent-Replayed";
    private const int BrokerRetryAfterSeconds = 5;
    private const int InFlightRetryAfterSeconds = 1;
    private static readonly JsonDocumentOptions JsonOptions = new() { MaxDepth = 64, CommentHandling = JsonCommentHandling.Disallow };

    public async Task<IResult> SubmitOneAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        var (body, document, problem) = await ReadJsonAsync(request, options.Value.MaxEventBytes, cancellationToken);
        if (problem is not null)
        {
            return problem;
        }

        // The body's pooled buffer goes back only after the document (which reads from it) and the publish are done.
        using (body)
        using (document)
        {
            var errors = new Dictionary<string, string[]>();
            var key = ReadIdempotencyKey(request, errors);
            var validated = validator.ValidateInBody(document!.RootElement, "", errors);
            if (validated is null || errors.Count > 0)
            {
                return ValidationProblem(errors);
            }

            var (events, failure) = await AcceptAsync(ScopeOf(request), key, body!.Memory, [validated], cancellationToken);
            if (failure is not null)
            {
                return failure;
            }

            var only = events![0];
            return only.Duplicate == true
                ? new HeaderResult(TypedResults.Ok(only), ("Location", $"/events/{only.Id}"), (ReplayedHeader, "true"))
                : new AcceptedEventResult(only, _acceptedJson);
        }
    }

    public async Task<IResult> SubmitBatchAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        var (body, document, problem) = await ReadJsonAsync(request, options.Value.MaxBatchBytes, cancellationToken);
        if (problem is not null)
        {
            return problem;
        }

        using (body)
        using (document)
        {
            var errors = new Dictionary<string, string[]>();
            var key = ReadIdempotencyKey(request, errors);
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

            var validated = new List<ValidatedEvent>(count);
            var index = 0;
            foreach (var item in items.EnumerateArray())
            {
                if (validator.ValidateInBody(item, $"events[{index++}]", errors) is { } ok)
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

            var (events, failure) = await AcceptAsync(ScopeOf(request), key, body!.Memory, validated, cancellationToken);
            if (failure is not null)
            {
                return failure;
            }

            var batch = new SubmittedBatch(events!);
            return events!.All(e => e.Duplicate == true)
                ? new HeaderResult(TypedResults.Ok(batch), (ReplayedHeader, "true"))
                : TypedResults.Accepted((string?)null, batch);
        }
    }

    /// <summary>
    /// A periodic schedule's tick, through the same idempotent path as a client's event: its id is deterministic, so a
    /// tick fired twice (two schedulers, or a restart between firing and recording it) enqueues one event.
    /// </summary>
    /// <returns>the event as accepted (<see cref="SubmittedEvent.Duplicate"/>: fired before), or null when it could not
    /// be enqueued now (broker down, backpressure, the same tick in flight elsewhere): try again later.</returns>
    public async Task<SubmittedEvent?> SubmitTickAsync(ValidatedEvent tick, CancellationToken cancellationToken)
    {
        var (events, failure) = await AcceptAsync("scheduler", null, ReadOnlyMemory<byte>.Empty, [tick], cancellationToken);
        return failure is null ? events![0] : null;
    }

    /// <summary>The lanes of <paramref name="events"/> in order of first appearance (at most two: a scan, not the hash
    /// set LINQ's Distinct builds for every request).</summary>
    private static List<string> LanesOf(IReadOnlyList<ValidatedEvent> events)
    {
        var lanes = new List<string>(2);
        foreach (var e in events)
        {
            if (!lanes.Contains(e.Lane))
            {
                lanes.Add(e.Lane);
            }
        }

        return lanes;
    }

    private static string ScopeOf(HttpRequest request) => request.HttpContext.Items[ApiKeyFilter.ScopeItem] as string ?? "";

    /// <summary>Backpressure, then the idempotency claim, then the broker writes; answers in request order.</summary>
    private async Task<(IReadOnlyList<SubmittedEvent>? Events, IResult? Problem)> AcceptAsync(
        string scope, string? key, ReadOnlyMemory<byte> body, IReadOnlyList<ValidatedEvent> events, CancellationToken cancellationToken)
    {
        if (backpressure.Overloaded(LanesOf(events)) is { } busy)
        {
            logger.LogInformation("Refusing a submission: the {Lane} lane's lag {Lag} is over its limit {Limit}", busy.Lane, busy.Lag, busy.Limit);
            var problem = new ProblemDetails
            {
                Status = StatusCodes.Status429TooManyRequests,
                Type = Problems.LaneBackpressure,
                Title = $"The {busy.Lane} lane is over its lag limit",
                Detail = $"{busy.Lag} events are waiting for a consumer (limit {busy.Limit}). Nothing was enqueued; retry after the indicated delay.",
                Extensions = { ["lane"] = busy.Lane, ["lag"] = busy.Lag, ["limit"] = busy.Limit },
            };
            return (null, new HeaderResult(TypedResults.Problem(problem), ("Retry-After", backpressure.RetryAfterSeconds.ToString(CultureInfo.InvariantCulture))));
        }

        if (CpuLaneSubmission.Takes(key, events))
        {
            return await AcceptCpuLaneAsync(scope, key, body, events, cancellationToken);
        }

        IdempotencyClaim claim;
        EndPoint? primary = null;
        try
        {
            if (replicas.Enabled && IdempotencyGuard.NeedsClaim(key, events))
            {
                // The claim binds the key and ids in Redis: with Ingest:RedisReplicaAcks its replicas must hold that too.
                primary = await replicas.PrimaryAsync().WaitAsync(options.Value.BrokerTimeout, cancellationToken);
            }

            claim = IdempotencyGuard.NeedsClaim(key, events)
                ? await idempotency.ClaimAsync(key, scope, body, events).WaitAsync(options.Value.BrokerTimeout, cancellationToken)
                : IdempotencyClaim.Unguarded(events);
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
        {
            logger.LogWarning(ex, "The idempotency store did not answer");
            return (null, Problems.Unavailable(null, "The idempotency store (Redis) is unavailable",
                "Events with a client-given id or an Idempotency-Key are checked against earlier submissions first, and that check could not run. Nothing new was enqueued by this request (events an earlier try with the same key or ids got held stay held).",
                BrokerRetryAfterSeconds));
        }

        if (ConflictProblem(claim.Outcome) is { } conflict)
        {
            return (null, conflict);
        }

        var outcome = await PublishAsync(claim.Fresh, claim.Repeats, cancellationToken);
        if (claim.Token.Length > 0)
        {
            await SettleReservationsAsync(claim, outcome);
        }

        if (outcome.Failure is not null)
        {
            return (null, outcome.Failure);
        }

        if (primary is not null && await ReplicasMissAsync(primary, claim, outcome, cancellationToken) is { } unreplicated)
        {
            return (null, unreplicated);
        }

        return (Answer(claim), null);
    }

    /// <summary>
    /// A guarded CPU-lane request: the idempotency check and the publish are one Redis script, one round trip
    /// (<see cref="CpuLaneSubmission"/>); the answers are the same as on the general path.
    /// </summary>
    private async Task<(IReadOnlyList<SubmittedEvent>? Events, IResult? Problem)> AcceptCpuLaneAsync(
        string scope, string? key, ReadOnlyMemory<byte> body, IReadOnlyList<ValidatedEvent> events, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.Value.BrokerTimeout);
        IdempotencyClaim claim;
        try
        {
            claim = await cpuLane.SubmitAsync(key, scope, body, events, DateTimeOffset.UtcNow, timeout.Token);
        }
        catch (BrokerUnavailableException ex)
        {
            logger.LogWarning(ex, "The {Lane} lane's broker did not confirm {Count} events ({Confirmed} confirmed before it failed, {Uncertain} in doubt)",
                ex.Lane, events.Count, ex.Confirmed.Count, ex.Uncertain.Count);
            return (null, Problems.Unavailable(ex.Lane, $"The {ex.Lane} lane's broker is unavailable",
                "Redis did not confirm this request's idempotency check and write; the script may or may not have run. " +
                "The events in uncertainIds may or may not be held (as may an earlier try's events under the same key or ids); nothing else was enqueued. " +
                "Retry after the indicated delay with the same Idempotency-Key (or the same event ids): " +
                "the retry gets the same ids and publishes what is not held, so nothing runs under two ids.",
                BrokerRetryAfterSeconds, null, [.. ex.Uncertain.Select(e => e.Id)]));
        }

        if (ConflictProblem(claim.Outcome) is { } conflict)
        {
            return (null, conflict);
        }

        Accepted(claim.Fresh);
        return (Answer(claim), null);
    }

    private static IResult? ConflictProblem(ClaimOutcome outcome) => outcome switch
    {
        ClaimOutcome.KeyReused => Problems.Problem(StatusCodes.Status422UnprocessableEntity, Problems.IdempotencyKeyReused,
            "This Idempotency-Key was used for a different request",
            "A key identifies one request body for the retention window; send a new key for a new request."),
        ClaimOutcome.InFlight => new HeaderResult(
            Problems.Problem(StatusCodes.Status409Conflict, Problems.IdempotencyInFlight, "The same event is being submitted right now",
                "Another request with this Idempotency-Key or event id is still waiting for its broker. Retry after the indicated delay to get its outcome."),
            ("Retry-After", InFlightRetryAfterSeconds.ToString(CultureInfo.InvariantCulture))),
        _ => null,
    };

    /// <summary>The request's events in order: a repeat as it stands (200 when all are), a new one accepted or scheduled.</summary>
    private static List<SubmittedEvent> Answer(IdempotencyClaim claim)
    {
        if (claim.Repeats.Count == 0)
        {
            return [.. claim.Requested.Select(e => new SubmittedEvent(e.Id, e.Lane, e.IsTimed ? EventStates.Scheduled : EventStates.Accepted))];
        }

        var repeats = claim.Repeats.ToDictionary(r => r.Id);
        return [.. claim.Requested
            .Select(e => repeats.TryGetValue(e.Id, out var r)
                ? new SubmittedEvent(r.Id, r.Lane ?? e.Lane, r.State, Duplicate: true)
                : new SubmittedEvent(e.Id, e.Lane, e.IsTimed ? EventStates.Scheduled : EventStates.Accepted))];
    }

    /// <summary>
    /// With <see cref="IngestOptions.RedisReplicaAcks"/>: the key's binding and the repeats an earlier try wrote (a 503's
    /// uncertain events among them) are in Redis, and a repeat is answered as held only once the replicas hold them too
    /// — the same promise a fresh 202 makes. A CPU-lane or timed event written now was already waited for by its writer.
    /// </summary>
    /// <returns>the 503 when the replicas did not acknowledge; null when they did.</returns>
    private async Task<IResult?> ReplicasMissAsync(EndPoint primary, IdempotencyClaim claim, PublishOutcome outcome, CancellationToken cancellationToken)
    {
        try
        {
            await replicas.WaitAsync(primary, cancellationToken).WaitAsync(options.Value.BrokerTimeout, cancellationToken);
            return null;
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
        {
            logger.LogWarning(ex, "Redis replicas did not acknowledge the idempotency binding or the repeated events of a request");
            // Events in RabbitMQ's quorum queue are held whatever Redis does; the others' writes are in doubt.
            var held = outcome.Confirmed.Where(e => e.Lane == Lanes.Io && !e.IsTimed).Select(e => e.Id).ToHashSet(StringComparer.Ordinal);
            var uncertain = claim.Requested.Select(e => e.Id).Where(id => !held.Contains(id)).ToList();
            return Problems.Unavailable(Lanes.Cpu, "Redis's replicas did not confirm this request's writes",
                "The Redis primary holds this request's events and idempotency binding, but fewer replicas than required confirmed them, " +
                "so a failover could lose them. The ones in heldIds are held; the ones in uncertainIds may or may not be. " +
                "Retry after the indicated delay with the same Idempotency-Key (or the same event ids): the retry gets the same ids.",
                BrokerRetryAfterSeconds, held.Count > 0 ? [.. held] : null, uncertain.Count > 0 ? [.. uncertain] : null);
        }
    }

    /// <summary>
    /// Confirmed events keep their reservation for the retention window (a CPU-lane event's status stands for it); the
    /// others are freed so that the client's
    /// retry publishes the same ids again. If Redis cannot take this now, the reservations simply expire (pending TTL):
    /// a repeat meanwhile gets 409, never new ids.
    /// </summary>
    private async Task SettleReservationsAsync(IdempotencyClaim claim, PublishOutcome outcome)
    {
        try
        {
            // A CPU-lane event that went straight into its stream needs no mark: its status was written by the same
            // script as its entry and outlives the mark's window (kept Status:Retention after its last change, never
            // deleted), and the guard answers an id with a status as a repeat before it looks at the reservation.
            var toMark = outcome.Confirmed.Where(e => e.Lane != Lanes.Cpu || e.IsTimed).ToList();
            if (toMark.Count > 0)
            {
                await idempotency.ConfirmAsync(toMark);
            }

            if (outcome.Failure is not null)
            {
                var confirmed = outcome.Confirmed.Select(e => e.Id).ToHashSet(StringComparer.Ordinal);
                await idempotency.ReleaseAsync(claim, [.. claim.Fresh.Where(e => !confirmed.Contains(e.Id))]);
            }
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
        {
            logger.LogWarning(ex, "Could not update idempotency reservations after publishing");
        }
    }

    /// <param name="Confirmed">events a broker confirmed: they will run.</param>
    /// <param name="Failure">the 503 when a broker did not confirm everything.</param>
    private sealed record PublishOutcome(IReadOnlyList<ValidatedEvent> Confirmed, IResult? Failure);

    /// <param name="alreadyHeld">events of the request an earlier try got held: named in a 503's heldIds too.</param>
    private async Task<PublishOutcome> PublishAsync(IReadOnlyList<ValidatedEvent> events, IReadOnlyList<RepeatedEvent> alreadyHeld, CancellationToken cancellationToken)
    {
        var acceptedAt = DateTimeOffset.UtcNow;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.Value.BrokerTimeout);
        var held = new List<ValidatedEvent>();
        // Timed events (notBefore, delay, expiresAt) are held in Redis first; the rest go straight into their lane.
        var timed = events.Where(e => e.IsTimed).ToList();
        var steps = new List<(IReadOnlyList<ValidatedEvent> Events, Func<IReadOnlyList<ValidatedEvent>, Task> Write)>();
        if (timed.Count > 0)
        {
            steps.Add((timed, batch => delayed.HoldAsync(batch, acceptedAt, timeout.Token)));
        }

        foreach (var publisher in publishers)
        {
            steps.Add(([.. events.Where(e => e.Lane == publisher.Lane && !e.IsTimed)], batch => publisher.PublishAsync(batch, acceptedAt, timeout.Token)));
        }

        foreach (var (forLane, write) in steps)
        {
            if (forLane.Count == 0)
            {
                continue;
            }

            try
            {
                await write(forLane);
            }
            catch (BrokerUnavailableException ex)
            {
                logger.LogWarning(ex, "The {Lane} lane's broker did not confirm {Count} events ({Confirmed} confirmed before it failed, {Uncertain} in doubt)",
                    ex.Lane, forLane.Count, ex.Confirmed.Count, ex.Uncertain.Count);
                Accepted(ex.Confirmed);
                held.AddRange(ex.Confirmed);
                return new PublishOutcome(held, Problems.Unavailable(ex.Lane, $"The {ex.Lane} lane's broker is unavailable",
                    "The broker did not confirm every event of this request. The ones in heldIds are held and will run; " +
                    "the ones in uncertainIds were being written when it failed and may or may not be held; the others were not enqueued. " +
                    "Retry after the indicated delay with the same Idempotency-Key (or the same event ids): " +
                    "the retry gets the same ids and publishes what is not held, so nothing runs under two ids.",
                    BrokerRetryAfterSeconds, held.Count + alreadyHeld.Count > 0 ? [.. alreadyHeld.Select(r => r.Id), .. held.Select(e => e.Id)] : null,
                    ex.Uncertain.Count > 0 ? [.. ex.Uncertain.Select(e => e.Id)] : null));
            }

            held.AddRange(forLane);
            Accepted(forLane);
        }

        return new PublishOutcome(held, null);
    }

    private void Accepted(IReadOnlyList<ValidatedEvent> events)
    {
        foreach (var group in events.GroupBy(e => (e.Lane, e.Type)))
        {
            metrics.Accepted(group.Key.Lane, group.Key.Type, group.Count());
        }
    }

    private static string? ReadIdempotencyKey(HttpRequest request, Dictionary<string, string[]> errors)
    {
        var values = request.Headers[IdempotencyGuard.HeaderName];
        if (values.Count == 0)
        {
            return null;
        }

        var key = values.Count == 1 ? values[0] : null;
        if (key is null || key.Length is 0 or > IdempotencyGuard.MaxKeyLength || key.Any(c => c is < '!' or > '~'))
        {
            errors[IdempotencyGuard.HeaderName] = [$"must be sent once, 1 to {IdempotencyGuard.MaxKeyLength} visible ASCII characters"];
            return null;
        }

        return key;
    }

    private static async Task<(PooledRequestBody? Body, JsonDocument? Document, IResult? Problem)> ReadJsonAsync(HttpRequest request, int maxBytes, CancellationToken cancellationToken)
    {
        if (!request.HasJsonContentType())
        {
            return (null, null, Problems.Problem(StatusCodes.Status415UnsupportedMediaType, Problems.UnsupportedMediaType,
                "Unsupported media type", "Send the event as JSON with Content-Type: application/json."));
        }

        if (request.ContentLength > maxBytes)
        {
            return (null, null, TooLarge(maxBytes));
        }

        // The budget and its options come from the request's services so that this path keeps its shape; the
        // reservation is made here, in the endpoint, i.e. after the API key was checked.
        var budget = request.HttpContext.RequestServices.GetRequiredService<InFlightIngestBudget>();
        PooledRequestBody? body;
        try
        {
            (body, var outcome) = await PooledRequestBody.ReadAsync(request.Body, request.ContentLength, maxBytes, budget, budget.BodyReadTimeout, cancellationToken);
            switch (outcome)
            {
                case PooledRequestBody.Outcome.TooLarge:
                    return (null, null, TooLarge(maxBytes));
                case PooledRequestBody.Outcome.OverBudget:
                    return (null, null, budget.Refusal(request.HttpContext.RequestServices.GetRequiredService<ILogger<InFlightIngestBudget>>(),
                        request.ContentLength));
                case PooledRequestBody.Outcome.TimedOut:
                    return (null, null, budget.Timeout());
            }
        }
        catch (BadHttpRequestException ex)
        {
            // Kestrel's own limits (MaxRequestBodySize, minimum data rate) or a broken chunked encoding.
            return (null, null, ex.StatusCode switch
            {
                StatusCodes.Status413PayloadTooLarge => TooLarge(maxBytes),
                // Kestrel's own body timeout (minimum data rate): the same answer as the API's body read deadline.
                StatusCodes.Status408RequestTimeout => budget.Timeout(),
                _ => Problems.Problem(StatusCodes.Status400BadRequest, Problems.MalformedJson, "The body could not be read", ex.Message),
            });
        }

        try
        {
            return (body, JsonDocument.Parse(body!.Memory, JsonOptions), null);
        }
        catch (JsonException ex)
        {
            body!.Dispose();
            return (null, null, Problems.Problem(StatusCodes.Status400BadRequest, Problems.MalformedJson, "The body is not valid JSON", ex.Message));
        }
    }

    private static IResult TooLarge(int maxBytes) =>
        Problems.Problem(StatusCodes.Status413PayloadTooLarge, Problems.PayloadTooLarge, "The body is too large", $"The limit is {maxBytes} bytes.");

    private static IResult ValidationProblem(Dictionary<string, string[]> errors) =>
        TypedResults.ValidationProblem(errors, type: Problems.Validation, title: "The event is not valid");
}

/// <summary>
/// The 202 of <c>POST /events</c>: the same status, Location and JSON body (<c>application/json; charset=utf-8</c>) as
/// <c>TypedResults.Accepted</c>, written with a type info resolved once instead of per request.
/// </summary>
public sealed class AcceptedEventResult(SubmittedEvent value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<SubmittedEvent> json)
    : IResult, IStatusCodeHttpResult, IValueHttpResult, IValueHttpResult<SubmittedEvent>
{
    public int? StatusCode => StatusCodes.Status202Accepted;

    public SubmittedEvent Value => value;

    object? IValueHttpResult.Value => value;

    public Task ExecuteAsync(HttpContext httpContext)
    {
        httpContext.Response.StatusCode = StatusCodes.Status202Accepted;
        httpContext.Response.Headers.Location = $"/events/{value.Id}";
        return httpContext.Response.WriteAsJsonAsync(value, json, contentType: null, httpContext.RequestAborted);
    }
}

/// <summary>Adds response headers to a result (Retry-After on 503/429/409, Location and Idempotent-Replayed on a repeat).</summary>
public sealed class HeaderResult(IResult inner, params (string Name, string Value)[] headers) : IResult
{
    public Task ExecuteAsync(HttpContext httpContext)
    {
        foreach (var (name, value) in headers)
        {
            httpContext.Response.Headers[name] = value;
        }

        return inner.ExecuteAsync(httpContext);
    }
}
