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

    public static IResult Problem(int status, string type, string title, string? detail = null) =>
        TypedResults.Problem(statusCode: status, type: type, title: title, detail: detail);
}
