namespace EventPipeline.Producer.Apis;

/// <summary>Stable RFC 9457 <c>type</c> URIs, one per kind of error. Documented in the README.</summary>
public static class Problems
{
    private const string Base = "https://eventpipeline.dev/problems/";

    public const string MalformedJson = Base + "malformed-json";
    public const string Validation = Base + "validation";
    public const string UnsupportedMediaType = Base + "unsupported-media-type";
    public const string PayloadTooLarge = Base + "payload-too-large";
    public const string BrokerUnavailable = Base + "broker-unavailable";
    public const string NotFound = Base + "not-found";
    public const string Unauthorized = Base + "unauthorized";
    public const string Forbidden = Base + "forbidden";
    public const string LaneBackpressure = Base + "lane-backpressure";
    public const string IdempotencyInFlight = Base + "idempotency-in-flight";
    public const string IdempotencyKeyReused = Base + "idempotency-key-reused";
    public const string UnknownLane = Base + "unknown-lane";
    public const string DeadLetterBusy = Base + "dead-letter-busy";
    public const string RouteNotFound = Base + "route-not-found";
    public const string MethodNotAllowed = Base + "method-not-allowed";
    public const string BadRequest = Base + "bad-request";
    public const string InternalError = Base + "internal-error";
    public const string EventAlreadyStarted = Base + "event-already-started";
    public const string ScheduleNotFound = Base + "schedule-not-found";

    public static IResult Problem(int status, string type, string title, string? detail = null) =>
        TypedResults.Problem(statusCode: status, type: type, title: title, detail: detail);

    /// <summary>
    /// 503 <see cref="BrokerUnavailable"/> with Retry-After: a lane's broker, or the store behind an operation, did not
    /// answer in time. <paramref name="heldIds"/> names events of the request a broker confirmed (they will run),
    /// <paramref name="uncertainIds"/> those whose write was in flight when it failed (a broker may hold them).
    /// </summary>
    public static IResult Unavailable(string? lane, string title, string detail, int retryAfterSeconds,
        IReadOnlyList<string>? heldIds = null, IReadOnlyList<string>? uncertainIds = null)
    {
        var problem = new Microsoft.AspNetCore.Mvc.ProblemDetails
        {
            Status = StatusCodes.Status503ServiceUnavailable,
            Type = BrokerUnavailable,
            Title = title,
            Detail = detail,
        };
        if (lane is not null)
        {
            problem.Extensions["lane"] = lane;
        }

        if (heldIds is not null)
        {
            problem.Extensions["heldIds"] = heldIds;
        }

        if (uncertainIds is not null)
        {
            problem.Extensions["uncertainIds"] = uncertainIds;
        }

        return new Ingest.HeaderResult(TypedResults.Problem(problem),
            ("Retry-After", retryAfterSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture)));
    }

    /// <summary>
    /// Gives the problems the framework writes itself (no route, wrong method, unreadable request, unhandled error) a
    /// stable type of ours instead of a link to an RFC section.
    /// </summary>
    public static void AssignStableType(Microsoft.AspNetCore.Http.ProblemDetailsContext context)
    {
        var problem = context.ProblemDetails;
        if (problem.Type is not null && problem.Type.StartsWith(Base, StringComparison.Ordinal))
        {
            return;
        }

        problem.Type = problem.Status switch
        {
            StatusCodes.Status404NotFound => RouteNotFound,
            StatusCodes.Status405MethodNotAllowed => MethodNotAllowed,
            StatusCodes.Status413PayloadTooLarge => PayloadTooLarge,
            StatusCodes.Status415UnsupportedMediaType => UnsupportedMediaType,
            StatusCodes.Status401Unauthorized => Unauthorized,
            StatusCodes.Status403Forbidden => Forbidden,
            >= 500 => InternalError,
            _ => BadRequest,
        };
    }
}
