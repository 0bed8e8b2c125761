using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Validation;

/// <summary>The hosts an event's <c>target</c> may name, bound from <c>Downstream</c>.</summary>
public sealed class DownstreamTargetOptions
{
    public const int MaxTargetLength = 2048;

    /// <summary>Host names (no scheme, no port) an I/O event may be delivered to. Empty: no event may carry a target.</summary>
    public List<string> AllowedHosts { get; set; } = [];
}

/// <summary>
/// Decides whether a client-given delivery URL is acceptable: absolute, http or https, no user info, and a host on the
/// allow-list (exact, case-insensitive). Event payloads are data; only this check lets a URL through.
/// </summary>
public sealed class DownstreamTargets(IOptions<DownstreamTargetOptions> options)
{
    public bool IsAllowed(string value, out string reason)
    {
        if (value.Length is 0 or > DownstreamTargetOptions.MaxTargetLength
            || !Uri.TryCreate(value, UriKind.Absolute, out var uri)
            || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
        {
            reason = $"must be an absolute http or https URL of at most {DownstreamTargetOptions.MaxTargetLength} characters";
            return false;
        }

        if (uri.UserInfo.Length > 0 || uri.Fragment.Length > 0)
        {
            reason = "must not carry user info or a fragment";
            return false;
        }

        if (!options.Value.AllowedHosts.Contains(uri.IdnHost, StringComparer.OrdinalIgnoreCase))
        {
            reason = options.Value.AllowedHosts.Count == 0
                ? "is not accepted: no downstream hosts are allowed (Downstream:AllowedHosts is empty)"
                : $"host '{uri.IdnHost}' is not on the allow-list of downstream hosts";
            return false;
        }

        reason = "";
        return true;
    }
}
