using EventPipeline.Shared;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Validation;

/// <summary>The origins an event's <c>target</c> may name, bound from <c>Downstream</c>.</summary>
public sealed class DownstreamTargetOptions
{
    public const int MaxTargetLength = 2048;

    /// <summary>
    /// Origins (<c>scheme://host[:port]</c>; no port = the scheme's default) an I/O event may be delivered to.
    /// Empty, with <see cref="AllowedHosts"/> empty too: no event may carry a target.
    /// </summary>
    public List<string> AllowedOrigins { get; set; } = [];

    /// <summary>Older form, still read: bare host names, each allowing http on port 80 and https on port 443 only.</summary>
    public List<string> AllowedHosts { get; set; } = [];

    /// <summary>For start-up validation: every entry must parse.</summary>
    public bool TryGetOrigins(out DownstreamOrigins origins, out string error) =>
        DownstreamOrigins.TryParse(AllowedOrigins, AllowedHosts, out origins, out error);
}

/// <summary>
/// Decides whether a client-given delivery URL is acceptable: absolute, http or https, no user info, and its origin
/// (scheme, host and port) on the allow-list — the same <see cref="DownstreamOrigins"/> rule Worker.Io applies again
/// before it calls. Event payloads are data; only this check lets a URL through.
/// </summary>
public sealed class DownstreamTargets
{
    private readonly DownstreamOrigins _allowed;

    public DownstreamTargets(IOptions<DownstreamTargetOptions> options)
    {
        // Start-up validation (ValidateOnStart) has already refused a malformed list; a unit test may skip it.
        if (!options.Value.TryGetOrigins(out _allowed, out var error))
        {
            throw new OptionsValidationException("Downstream", typeof(DownstreamTargetOptions), [error]);
        }
    }

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

        if (!_allowed.Allows(uri))
        {
            reason = _allowed.Count == 0
                ? "is not accepted: no downstream origins are allowed (Downstream:AllowedOrigins is empty)"
                : $"origin '{DownstreamOrigins.OriginOf(uri)}' (scheme, host and port) is not on the allow-list of downstream origins";
            return false;
        }

        reason = "";
        return true;
    }
}
