namespace EventPipeline.Shared;

/// <summary>
/// The origins — scheme, host and port — a webhook may be delivered to: the one rule Producer.Api applies to an
/// event's <c>target</c> at the door and Worker.Io applies again before every call, so a client-named URL reaches only
/// a service an operator listed, never another port of the same host.
/// </summary>
/// <remarks>
/// Entries (<c>Downstream:AllowedOrigins</c>) are <c>scheme://host[:port]</c>: <c>https://hooks.example.com</c>,
/// <c>http://localhost:5183</c>. Without a port an entry means the scheme's default port only. A bare host — the older
/// <c>Downstream:AllowedHosts</c> form, still read — means http on port 80 and https on port 443, nothing else.
/// Hosts compare as .NET's <see cref="Uri"/> normalizes them (case-insensitive, IDN as punycode); no wildcard, no
/// suffix match.
/// </remarks>
public sealed class DownstreamOrigins
{
    private readonly HashSet<string> _origins;

    private DownstreamOrigins(HashSet<string> origins) => _origins = origins;

    public static DownstreamOrigins None { get; } = new([]);

    public int Count => _origins.Count;

    /// <summary>The allowed origins, <c>scheme://host:port</c> with the port always written out.</summary>
    public IReadOnlyCollection<string> Origins => _origins;

    /// <summary>Reads origin entries and legacy bare-host entries; false (with the offending entry named) on any malformed one.</summary>
    public static bool TryParse(IEnumerable<string> origins, IEnumerable<string> bareHosts, out DownstreamOrigins allowed, out string error)
    {
        var set = new HashSet<string>(StringComparer.Ordinal);
        foreach (var entry in origins)
        {
            if (!TryParseOrigin(entry, out var origin))
            {
                allowed = None;
                error = $"'{entry}' is not an origin: expected scheme://host[:port] with scheme http or https and nothing after the port";
                return false;
            }

            set.Add(origin);
        }

        foreach (var entry in bareHosts)
        {
            var host = entry.Trim();
            var kind = Uri.CheckHostName(host);
            if (kind is UriHostNameType.Unknown or UriHostNameType.Basic
                || !Uri.TryCreate($"http://{(kind == UriHostNameType.IPv6 ? $"[{host}]" : host)}/", UriKind.Absolute, out var uri))
            {
                allowed = None;
                error = $"'{entry}' is not a host name or address (list origins such as https://{entry} under AllowedOrigins)";
                return false;
            }

            set.Add(OriginOf(Uri.UriSchemeHttp, uri.IdnHost, 80));
            set.Add(OriginOf(Uri.UriSchemeHttps, uri.IdnHost, 443));
        }

        allowed = new DownstreamOrigins(set);
        error = "";
        return true;
    }

    /// <summary>The same list with one more origin (the worker's own configured downstream).</summary>
    public DownstreamOrigins With(Uri address) =>
        OriginOf(address) is { } origin ? new DownstreamOrigins([.. _origins, origin]) : this;

    /// <summary>True when <paramref name="target"/> is an absolute http(s) URL on one of the allowed origins.</summary>
    public bool Allows(Uri target) => OriginOf(target) is { } origin && _origins.Contains(origin);

    /// <returns><c>scheme://host:port</c> of an absolute http(s) URL, or null for anything else.</returns>
    public static string? OriginOf(Uri uri) =>
        uri.IsAbsoluteUri && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps) && uri.IdnHost.Length > 0
            ? OriginOf(uri.Scheme, uri.IdnHost, uri.Port)
            : null;

    private static string OriginOf(string scheme, string host, int port) => $"{scheme}://{host.ToLowerInvariant()}:{port}";

    private static bool TryParseOrigin(string entry, out string origin)
    {
        origin = "";
        if (!Uri.TryCreate(entry.Trim(), UriKind.Absolute, out var uri) || uri.UserInfo.Length > 0
            || uri.AbsolutePath != "/" || uri.Query.Length > 0 || uri.Fragment.Length > 0
            || OriginOf(uri) is not { } parsed)
        {
            return false;
        }

        origin = parsed;
        return true;
    }
}
