using EventPipeline.Shared;
using Microsoft.AspNetCore.Diagnostics;

namespace EventPipeline.Producer.Apis;

/// <summary>
/// Owns "a Redis outage is never a 5xx other than 503", for every endpoint at once: a Redis failure no endpoint handled
/// itself — the client's connection failure or timeout, its writer-completed race (StackExchange.Redis#2692), or an
/// error reply Redis gives only while unavailable or failing over (READONLY, MASTERDOWN, LOADING, BUSY…;
/// <see cref="RedisFailures.IsOutage"/>) — is answered 503
/// <see cref="Problems.BrokerUnavailable"/> with Retry-After instead of a 500. A write request is told that what it
/// changed before the failure may already be held. Endpoints that know more (which events a broker confirmed) still
/// answer their own 503 first; this is what the rest answer. Anything else, including every other
/// InvalidOperationException and Redis's other error replies (a script bug), stays a 500.
/// </summary>
public sealed class RedisOutageProblem(ILogger<RedisOutageProblem> logger) : IExceptionHandler
{
    public const int RetryAfterSeconds = 2;

    public async ValueTask<bool> TryHandleAsync(HttpContext httpContext, Exception exception, CancellationToken cancellationToken)
    {
        // A bare TimeoutException names no store: it counts as a Redis outage inside a Redis caller's own catch, not here.
        // Another error reply (ERR from a script, WRONGTYPE) is a defect of this server or of what it stored: a 500, so
        // that the client does not retry what will fail again and the defect shows in the error rate, not as an outage.
        if (!RedisFailures.IsOutage(exception) || (exception.GetType() == typeof(TimeoutException) && exception.InnerException is null)
            || httpContext.Response.HasStarted)
        {
            return false;
        }

        var request = httpContext.Request;
        var writes = !(HttpMethods.IsGet(request.Method) || HttpMethods.IsHead(request.Method) || HttpMethods.IsOptions(request.Method));
        logger.LogWarning(exception, "Redis failed under {Method} {Path}; answered 503", request.Method, request.Path.Value);
        var detail = writes
            ? "Redis failed while this request ran. What the request changed before the failure may already be held: " +
              "read it back (GET /events/{id}, the schedule or the dead letter) before relying on either outcome, or retry " +
              "after the indicated delay (with the same event ids or Idempotency-Key, a retry enqueues nothing twice)."
            : "Redis failed while this request ran; nothing was changed. Retry after the indicated delay.";
        httpContext.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
        await Problems.Unavailable(null, "The store behind this request (Redis) is unavailable", detail, RetryAfterSeconds).ExecuteAsync(httpContext);
        return true;
    }

}
