using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Threading.RateLimiting;
using Microsoft.Extensions.Options;

namespace EventPipeline.Worker.Io.Delivery;

/// <summary>Worth another attempt: 5xx, 408, 429, a timeout or a connection failure.</summary>
public sealed class TransientDownstreamException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The downstream said no for good (a 4xx other than 408/429): retrying cannot help.</summary>
public sealed class PermanentDownstreamException(string message) : Exception(message);

/// <summary>
/// POSTs a webhook body downstream with <c>Idempotency-Key: &lt;event id&gt;</c> (the trace context is added by the
/// HttpClient instrumentation). A token bucket per destination host holds calls back to the configured rate; a call
/// waits for its permit instead of failing.
/// </summary>
public sealed class DownstreamClient(HttpClient http, IOptions<DownstreamOptions> options) : IDisposable
{
    public const string HttpClientName = "downstream";
    private const int RefillsPerSecond = 20;
    private static readonly TimeSpan MaxRetryAfter = TimeSpan.FromSeconds(30);
    private readonly ConcurrentDictionary<string, TokenBucketRateLimiter> _limiters = new(StringComparer.OrdinalIgnoreCase);

    /// <param name="requestedTarget">the event's own delivery URL (validated by the API); null for the configured one.</param>
    public async Task DeliverAsync(string eventId, string body, string? requestedTarget, CancellationToken cancellationToken)
    {
        var target = ResolveTarget(requestedTarget);
        using (var lease = await LimiterFor(target.Host).AcquireAsync(1, cancellationToken))
        {
            if (!lease.IsAcquired)
            {
                throw new TransientDownstreamException($"rate limiter queue for {target.Host} is full");
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
            response = await http.SendAsync(request, cancellationToken);
        }
        catch (HttpRequestException ex)
        {
            throw new TransientDownstreamException($"POST {target} failed: {ex.Message}", ex);
        }
        catch (TaskCanceledException ex) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TransientDownstreamException($"POST {target} timed out after {http.Timeout}", ex);
        }

        using (response)
        {
            if (response.IsSuccessStatusCode)
            {
                return;
            }

            var status = (int)response.StatusCode;
            if (response.StatusCode == HttpStatusCode.TooManyRequests)
            {
                // Honour Retry-After before handing the message back to the retry policy.
                await Task.Delay(RetryAfter(response.Headers.RetryAfter), cancellationToken);
                throw new TransientDownstreamException($"POST {target} answered 429 Too Many Requests");
            }

            if (status >= 500 || response.StatusCode == HttpStatusCode.RequestTimeout)
            {
                throw new TransientDownstreamException($"POST {target} answered {status} {response.ReasonPhrase}");
            }

            throw new PermanentDownstreamException($"POST {target} answered {status} {response.ReasonPhrase}");
        }
    }

    /// <summary>
    /// The configured downstream, or the event's own URL when it has one — checked again here against
    /// <c>Downstream:AllowedHosts</c> (the API checks it too), so no message can make the worker call a host it was not
    /// configured for.
    /// </summary>
    private Uri ResolveTarget(string? requestedTarget)
    {
        if (string.IsNullOrEmpty(requestedTarget))
        {
            return new Uri(options.Value.BaseAddress, options.Value.Path);
        }

        if (!Uri.TryCreate(requestedTarget, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https")
            || !options.Value.AllowedHosts.Contains(uri.Host, StringComparer.OrdinalIgnoreCase))
        {
            throw new PermanentDownstreamException($"target '{requestedTarget}' is not an http(s) URL on Downstream:AllowedHosts");
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
