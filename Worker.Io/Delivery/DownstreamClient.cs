using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Threading.RateLimiting;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;

namespace EventPipeline.Worker.Io.Delivery;

/// <summary>Worth another attempt: 5xx, 408, 429, a timeout or a connection failure.</summary>
public sealed class TransientDownstreamException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The downstream said no for good (a 4xx other than 408/429): retrying cannot help.</summary>
public sealed class PermanentDownstreamException(string message) : Exception(message);

/// <summary>
/// POSTs a webhook body downstream with <c>Idempotency-Key: &lt;event id&gt;</c> (the trace context is added by the
/// HttpClient instrumentation), only to an allowed origin and never on to where a redirect points. A token bucket per
/// destination host holds calls back to the configured rate; a call waits for its permit instead of failing.
/// </summary>
/// <remarks>
/// The exception messages end up in the event's status, which whoever submitted the event can read: they say what
/// kind of failure it was and the downstream's status code, never an address, a port or a socket error. "Connection
/// refused" against "the response ended prematurely" would tell a closed port from an open one. The details go to
/// this worker's log.
/// </remarks>
public sealed class DownstreamClient(HttpClient http, IOptions<DownstreamOptions> options, ILogger<DownstreamClient> logger) : IDisposable
{
    public const string HttpClientName = "downstream";
    public const string Unreachable = "downstream unreachable (no HTTP response)";
    public const string NotAllowed = "target is not on the allowed downstream origins";
    private const int RefillsPerSecond = 20;
    private static readonly TimeSpan MaxRetryAfter = TimeSpan.FromSeconds(30);
    private readonly ConcurrentDictionary<string, TokenBucketRateLimiter> _limiters = new(StringComparer.OrdinalIgnoreCase);
    private readonly DownstreamOrigins _allowed = options.Value.TryGetOrigins(out var origins, out _) ? origins : DownstreamOrigins.None;

    // Built once: combining the base address and the path parses both again for every call.
    private readonly Uri _configuredTarget = new(options.Value.BaseAddress, options.Value.Path);

    /// <param name="requestedTarget">the event's own delivery URL (validated by the API); null for the configured one.</param>
    public async Task DeliverAsync(string eventId, string body, string? requestedTarget, CancellationToken cancellationToken)
    {
        var target = ResolveTarget(eventId, requestedTarget);
        using (var lease = await LimiterFor(target.Host).AcquireAsync(1, cancellationToken))
        {
            if (!lease.IsAcquired)
            {
                throw new TransientDownstreamException("downstream rate limiter queue is full");
            }
        }

        using var request = new HttpRequestMessage(HttpMethod.Post, target)
        {
            Content = new StringContent(body, Encoding.UTF8, "application/json"),
        };
        request.Headers.Add("Idempotency-Key", eventId);

        HttpResponseMessage response;
        try
        {
            // Only the status line and headers matter: the body is never read, so it is not buffered either (disposing the
            // response drains what is left of it, and the connection goes back to the pool).
            response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
        }
        catch (Exception ex) when (ex is HttpRequestException or SocketException or IOException)
        {
            // SocketsHttpHandler does not wrap every socket failure in an HttpRequestException: when the downstream resets
            // a connection right after accepting it, a query of the just-connected socket (on Linux, its remote address
            // after a reset) throws ENOTCONN, "Transport endpoint is not connected", straight out of SendAsync (CI of
            // session 16: the open-port test's event was dead-lettered with that text while a closed port's read
            // "downstream unreachable", which is what the test forbids). All of them are one failure, no HTTP response.
            var cause = ex switch
            {
                HttpRequestException http => http.HttpRequestError.ToString(),
                _ => ((ex as SocketException ?? ex.InnerException as SocketException)?.SocketErrorCode)?.ToString() ?? ex.GetType().Name,
            };
            logger.LogWarning(ex, "POST {Target} for event {EventId} got no HTTP response ({Cause})", target, eventId, cause);
            throw new TransientDownstreamException(Unreachable, ex);
        }
        catch (TaskCanceledException ex) when (!cancellationToken.IsCancellationRequested)
        {
            // A timeout is told apart from a refusal only in the log: to a caller it would mark a filtered port.
            logger.LogWarning("POST {Target} for event {EventId} timed out after {Timeout}", target, eventId, http.Timeout);
            throw new TransientDownstreamException(Unreachable, ex);
        }

        TimeSpan retryAfter;
        using (response)
        {
            // A 2xx status line is the downstream's answer: the delivery counts as done when the headers arrive, whatever
            // its body does next (docs/io-lane.md, "What counts as delivered").
            if (response.IsSuccessStatusCode)
            {
                return;
            }

            var status = (int)response.StatusCode;
            logger.LogInformation("POST {Target} for event {EventId} answered {Status} {Reason}", target, eventId, status, response.ReasonPhrase);
            if (response.StatusCode == HttpStatusCode.TooManyRequests)
            {
                retryAfter = RetryAfter(response.Headers.RetryAfter);
            }
            else if (status >= 500 || response.StatusCode == HttpStatusCode.RequestTimeout)
            {
                throw new TransientDownstreamException($"downstream answered {status}");
            }
            else if (status is >= 300 and < 400)
            {
                // Not followed (AllowAutoRedirect is off): the Location could name any origin. Retrying gets the same answer.
                throw new PermanentDownstreamException($"downstream answered {status}; redirects are not followed");
            }
            else
            {
                throw new PermanentDownstreamException($"downstream answered {status}");
            }
        }

        // Honour Retry-After before handing the message back to the retry policy — after the response is disposed, so
        // that its connection goes back to the pool instead of sitting idle through the wait (up to 30 s per 429).
        logger.LogInformation("Event {EventId} waits {RetryAfter} before its next attempt, as the 429 from {Target} asked", eventId, retryAfter, target);
        await Task.Delay(retryAfter, cancellationToken);
        throw new TransientDownstreamException("downstream answered 429");
    }

    /// <summary>
    /// The configured downstream, or the event's own URL when it has one — checked again here against the allowed
    /// origins (scheme, host and port; the API checks it too), so no message, however it reached the queue, can make
    /// the worker call an origin it was not configured for.
    /// </summary>
    private Uri ResolveTarget(string eventId, string? requestedTarget)
    {
        if (string.IsNullOrEmpty(requestedTarget))
        {
            return _configuredTarget;
        }

        if (!Uri.TryCreate(requestedTarget, UriKind.Absolute, out var uri) || uri.UserInfo.Length > 0 || !_allowed.Allows(uri))
        {
            logger.LogWarning("Event {EventId} names target {Target}, which is not on the allowed downstream origins; not calling it",
                eventId, requestedTarget);
            throw new PermanentDownstreamException(NotAllowed);
        }

        return uri;
    }

    private static TimeSpan RetryAfter(RetryConditionHeaderValue? header)
    {
        var delay = header?.Delta ?? (header?.Date is { } date ? date - DateTimeOffset.UtcNow : TimeSpan.FromSeconds(1));
        return delay < TimeSpan.Zero ? TimeSpan.Zero : delay > MaxRetryAfter ? MaxRetryAfter : delay;
    }

    private TokenBucketRateLimiter LimiterFor(string host) => _limiters.GetOrAdd(host, _ =>
    {
        // Refill every 50 ms with a bucket no bigger than one refill, so the rate holds within any one-second window
        // (at most permits + permits/20 there), not just on average; a caller queues for its permit instead of failing.
        var permits = options.Value.PermitsPerSecond;
        var perTick = Math.Max(1, permits / RefillsPerSecond);
        return new TokenBucketRateLimiter(new TokenBucketRateLimiterOptions
        {
            TokenLimit = perTick,
            TokensPerPeriod = perTick,
            ReplenishmentPeriod = TimeSpan.FromSeconds(1.0 * perTick / permits),
            AutoReplenishment = true,
            QueueLimit = int.MaxValue,
            QueueProcessingOrder = QueueProcessingOrder.OldestFirst,
        });
    });

    public void Dispose()
    {
        foreach (var limiter in _limiters.Values)
        {
            limiter.Dispose();
        }
    }
}
