using System.Text.Json;
using System.Text.RegularExpressions;
using System.Globalization;
using EventPipeline.Contracts;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Validation;

/// <summary>An event that passed validation and has a lane: ready to be handed to its broker.</summary>
/// <param name="ClientGivenId">true when the client chose the id: a repeat of that id is a duplicate, not a new event.</param>
/// <param name="Target">the allow-listed delivery URL of an I/O event, or null for the worker's configured downstream.</param>
/// <param name="NotBefore">when the event may start at the earliest; null: now.</param>
/// <param name="ExpiresAt">when an event that has not started by then is no longer run; null: never.</param>
public sealed record ValidatedEvent(string Id, string Type, string Lane, string Payload, bool ClientGivenId = false, string? Target = null,
    DateTimeOffset? NotBefore = null, DateTimeOffset? ExpiresAt = null)
{
    /// <summary>The payload in the request's parsed body, when its text is made only where it is written out.</summary>
    private JsonElement PayloadInBody { get; init; }

    /// <summary>
    /// The payload's JSON text. An event of a submission (<see cref="EventValidator.ValidateInBody"/>) makes it anew on
    /// each read from the request's body: the I/O lane writes a 1,000-event batch 100 messages at a time, so only the
    /// texts of one chunk are alive at once instead of every event's for the whole request (they were most of a batch's
    /// memory while it waited for the broker).
    /// </summary>
    public string Payload { get => field ?? PayloadInBody.GetRawText(); init; } = Payload;

    /// <summary>
    /// The payload's JSON as UTF-8, the bytes a broker stores: for an event of a submission, copied straight from the
    /// request's body (half the size of <see cref="Payload"/>'s UTF-16 text, and no transcoding on the way out).
    /// </summary>
    public byte[] PayloadUtf8 => PayloadInBody.ValueKind != JsonValueKind.Undefined
        ? System.Runtime.InteropServices.JsonMarshal.GetRawUtf8Value(PayloadInBody).ToArray()
        : System.Text.Encoding.UTF8.GetBytes(Payload);

    /// <summary>An event whose payload text is read from <paramref name="payloadInBody"/> when used: valid only while the
    /// document holding it is not disposed.</summary>
    internal static ValidatedEvent InBody(string id, string type, string lane, JsonElement payloadInBody, bool clientGivenId, string? target,
        DateTimeOffset? notBefore, DateTimeOffset? expiresAt) =>
        new(id, type, lane, null!, clientGivenId, target, notBefore, expiresAt) { PayloadInBody = payloadInBody };

    /// <summary>Held by the delayed-event store (scheduled) instead of going straight into its lane.</summary>
    public bool IsTimed => NotBefore is not null || ExpiresAt is not null;
}

/// <summary>
/// Checks one event object (<c>{"id"?, "type", "payload"}</c>) and its type's payload. Errors are keyed by JSON path
/// (<c>payload.iterations</c>, <c>events[3].type</c>) so a client sees exactly what to fix.
/// </summary>
public sealed partial class EventValidator(EventRouter router, DownstreamTargets targets, IOptions<SchedulingOptions>? scheduling = null)
{
    private readonly SchedulingOptions _scheduling = scheduling?.Value ?? new SchedulingOptions();

    public const int MaxIdLength = 128;
    public const int MaxTestFailTimes = 1000;
    public const int MaxPbkdf2Iterations = 10_000_000;
    public const int MaxPbkdf2DataLength = 65_536;

    [GeneratedRegex("^[A-Za-z0-9._:-]+$")]
    private static partial Regex IdPattern();

    // RFC 3339 date-time: a full date, a time with seconds, and an explicit offset (Z or ±hh:mm).
    [GeneratedRegex(@"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")]
    private static partial Regex Rfc3339Pattern();

    public ValidatedEvent? Validate(JsonElement element, string path, Dictionary<string, string[]> errors) =>
        Validate(element, path, errors, payloadInBody: false);

    /// <summary>
    /// <see cref="Validate(JsonElement, string, Dictionary{string, string[]})"/> for a request's body: the event's
    /// payload text is made from <paramref name="element"/> each time it is read, so the caller keeps the element's
    /// document alive until the event is published.
    /// </summary>
    public ValidatedEvent? ValidateInBody(JsonElement element, string path, Dictionary<string, string[]> errors) =>
        Validate(element, path, errors, payloadInBody: true);

    private ValidatedEvent? Validate(JsonElement element, string path, Dictionary<string, string[]> errors, bool payloadInBody)
    {
        try
        {
            return ValidateEvent(element, path, errors, payloadInBody);
        }
        catch (InvalidOperationException)
        {
            // Valid JSON can still hold a string that cannot be read as text: bytes that are not UTF-8, or an escaped lone
            // surrogate ("\ud800") where a string is unescaped. Reading it throws; such an event is the client's mistake,
            // not a server error.
            Add(errors, Join(path, ""), "contains a string that is not valid text (bytes that are not UTF-8, or an escaped lone UTF-16 surrogate)");
            return null;
        }
    }

    private ValidatedEvent? ValidateEvent(JsonElement element, string path, Dictionary<string, string[]> errors, bool payloadInBody)
    {
        var before = errors.Count;
        if (element.ValueKind != JsonValueKind.Object)
        {
            Add(errors, Join(path, ""), "must be a JSON object with \"type\" and \"payload\"");
            return null;
        }

        string? id = null;
        if (element.TryGetProperty("id", out var idElement))
        {
            if (idElement.ValueKind != JsonValueKind.String || idElement.GetString() is not { Length: > 0 and <= MaxIdLength } given || !IdPattern().IsMatch(given))
            {
                Add(errors, Join(path, "id"), $"must be a string of 1 to {MaxIdLength} characters from A-Z a-z 0-9 . _ : -");
            }
            else
            {
                id = given;
            }
        }

        string? type = null;
        if (!element.TryGetProperty("type", out var typeElement) || typeElement.ValueKind != JsonValueKind.String || string.IsNullOrEmpty(typeElement.GetString()))
        {
            Add(errors, Join(path, "type"), "is required and must be a string");
        }
        else
        {
            type = typeElement.GetString()!;
            if (!router.KnownTypes.Contains(type))
            {
                Add(errors, Join(path, "type"), $"'{Truncate(type)}' is not a known event type; known types: {string.Join(", ", router.KnownTypes)}");
                type = null;
            }
        }

        if (!element.TryGetProperty("payload", out var payload) || payload.ValueKind == JsonValueKind.Null)
        {
            Add(errors, Join(path, "payload"), "is required");
        }
        else if (payload.ValueKind != JsonValueKind.Object)
        {
            Add(errors, Join(path, "payload"), "must be a JSON object");
        }

        string? lane = null;
        if (type is not null && payload.ValueKind == JsonValueKind.Object)
        {
            lane = ValidatePayload(type, payload, Join(path, "payload"), errors);
        }

        string? target = null;
        if (element.TryGetProperty("target", out var targetElement) && targetElement.ValueKind != JsonValueKind.Null)
        {
            target = ValidateTarget(type, targetElement, Join(path, "target"), errors);
        }

        var (notBefore, expiresAt) = ValidateTiming(element, path, errors);

        if (errors.Count != before || type is null || lane is null)
        {
            return null;
        }

        // JsonDocument.Parse does not check the UTF-8 inside string values. Validated alone, GetRawText below transcodes the
        // payload and throws on such bytes (a 400 through the catch above); an event kept in its body is never transcoded
        // here, and its bytes would go to the lane as they are (or throw later, as a 500, where the I/O lane makes its
        // text). So the body's payload bytes are checked here, without a copy.
        if (payloadInBody && !System.Text.Unicode.Utf8.IsValid(System.Runtime.InteropServices.JsonMarshal.GetRawUtf8Value(payload)))
        {
            Add(errors, Join(path, "payload"), "contains bytes that are not valid UTF-8");
            return null;
        }

        var clientGivenId = id is not null;
        id ??= Guid.CreateVersion7().ToString("N");
        return payloadInBody
            ? ValidatedEvent.InBody(id, type, lane, payload, clientGivenId, target, notBefore, expiresAt)
            : new ValidatedEvent(id, type, lane, payload.GetRawText(), clientGivenId, target, notBefore, expiresAt);
    }

    /// <summary>
    /// <c>notBefore</c> (RFC 3339) or <c>delay</c> (seconds), not both, within <see cref="SchedulingOptions.MaxDelay"/>;
    /// a <c>notBefore</c> up to <see cref="SchedulingOptions.PastTolerance"/> in the past means now (null). <c>expiresAt</c>
    /// (RFC 3339) must lie in the future and after the start time.
    /// </summary>
    private (DateTimeOffset? NotBefore, DateTimeOffset? ExpiresAt) ValidateTiming(JsonElement element, string path, Dictionary<string, string[]> errors)
    {
        var now = DateTimeOffset.UtcNow;
        DateTimeOffset? start = null;
        var hasNotBefore = element.TryGetProperty("notBefore", out var notBeforeElement) && notBeforeElement.ValueKind != JsonValueKind.Null;
        var hasDelay = element.TryGetProperty("delay", out var delayElement) && delayElement.ValueKind != JsonValueKind.Null;
        if (hasNotBefore && hasDelay)
        {
            Add(errors, Join(path, "delay"), "give either notBefore or delay, not both");
        }
        else if (hasNotBefore)
        {
            if (ReadTime(notBeforeElement) is not { } at)
            {
                Add(errors, Join(path, "notBefore"), "must be an RFC 3339 date-time with an offset, e.g. 2026-01-31T12:00:00Z");
            }
            else if (at < now - _scheduling.PastTolerance)
            {
                Add(errors, Join(path, "notBefore"), $"is more than {_scheduling.PastTolerance} in the past");
            }
            else if (at > now + _scheduling.MaxDelay)
            {
                Add(errors, Join(path, "notBefore"), $"is further ahead than the horizon of {_scheduling.MaxDelay}");
            }
            else
            {
                start = at > now ? at : null;
            }
        }
        else if (hasDelay)
        {
            if (delayElement.ValueKind != JsonValueKind.Number || !delayElement.TryGetDouble(out var seconds) || double.IsNaN(seconds) || seconds < 0)
            {
                Add(errors, Join(path, "delay"), "must be a number of seconds, 0 or more");
            }
            else if (seconds > _scheduling.MaxDelay.TotalSeconds)
            {
                Add(errors, Join(path, "delay"), $"is longer than the horizon of {_scheduling.MaxDelay.TotalSeconds} seconds");
            }
            else
            {
                start = seconds > 0 ? now + TimeSpan.FromSeconds(seconds) : null;
            }
        }

        DateTimeOffset? expiresAt = null;
        if (element.TryGetProperty("expiresAt", out var expiresElement) && expiresElement.ValueKind != JsonValueKind.Null)
        {
            if (ReadTime(expiresElement) is not { } at)
            {
                Add(errors, Join(path, "expiresAt"), "must be an RFC 3339 date-time with an offset, e.g. 2026-01-31T12:00:00Z");
            }
            else if (at <= (start ?? now))
            {
                Add(errors, Join(path, "expiresAt"), start is null ? "is not in the future" : "is not after the event's start time (notBefore or delay)");
            }
            else
            {
                expiresAt = at;
            }
        }

        return (start, expiresAt);
    }

    private static DateTimeOffset? ReadTime(JsonElement element) =>
        element.ValueKind == JsonValueKind.String && element.GetString() is { } text && Rfc3339Pattern().IsMatch(text)
        && DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var at)
            ? at.ToUniversalTime()
            : null;

    /// <summary>
    /// <c>target</c>: where an I/O event is delivered. Only an absolute http(s) URL whose origin (scheme, host and
    /// port) is on <c>Downstream:AllowedOrigins</c> passes, so no client can make a worker call an address — or another
    /// port of an allowed host — of its choosing.
    /// </summary>
    private string? ValidateTarget(string? type, JsonElement target, string path, Dictionary<string, string[]> errors)
    {
        if (type is not null && type != EventTypes.WebhookPost)
        {
            Add(errors, path, $"is only accepted for {EventTypes.WebhookPost} events");
            return null;
        }

        if (target.ValueKind != JsonValueKind.String)
        {
            Add(errors, path, "must be a string (an absolute http or https URL)");
            return null;
        }

        if (!targets.IsAllowed(target.GetString()!, out var reason))
        {
            Add(errors, path, reason);
            return null;
        }

        return target.GetString();
    }

    /// <summary>
    /// <c>then</c> of a CPU event: the I/O event the worker hands its result on to. Checked here, at the door, so a
    /// chain cannot fail late on a type or target the API would never have accepted.
    /// </summary>
    private void ValidateThen(JsonElement then, string path, Dictionary<string, string[]> errors)
    {
        if (then.ValueKind != JsonValueKind.Object)
        {
            Add(errors, path, "must be an object {\"type\", \"payload\", \"target\"?}");
            return;
        }

        var ioTypes = router.KnownTypes.Where(t => router.LaneOf(t) == Lanes.Io && !EventTypes.IsTestType(t)).ToList();
        if (!then.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String || !ioTypes.Contains(type.GetString()!))
        {
            Add(errors, Join(path, "type"), $"is required and must be an I/O-lane event type: {string.Join(", ", ioTypes)}");
        }

        if (!then.TryGetProperty("payload", out var payload) || payload.ValueKind != JsonValueKind.Object)
        {
            Add(errors, Join(path, "payload"), "is required and must be a JSON object");
        }

        if (then.TryGetProperty("target", out var target) && target.ValueKind != JsonValueKind.Null)
        {
            ValidateTarget(type.ValueKind == JsonValueKind.String ? type.GetString() : null, target, Join(path, "target"), errors);
        }
    }

    /// <returns>the lane, or null when the payload is invalid.</returns>
    private string? ValidatePayload(string type, JsonElement payload, string path, Dictionary<string, string[]> errors)
    {
        switch (type)
        {
            case EventTypes.Pbkdf2:
                if (!payload.TryGetProperty("data", out var data) || data.ValueKind != JsonValueKind.String)
                {
                    Add(errors, Join(path, "data"), "is required and must be a string");
                }
                else if (data.GetString()!.Length > MaxPbkdf2DataLength)
                {
                    Add(errors, Join(path, "data"), $"must be at most {MaxPbkdf2DataLength} characters");
                }

                if (!payload.TryGetProperty("iterations", out var iterations) || iterations.ValueKind != JsonValueKind.Number
                    || !iterations.TryGetInt32(out var count) || count is < 1 or > MaxPbkdf2Iterations)
                {
                    Add(errors, Join(path, "iterations"), $"is required and must be a whole number from 1 to {MaxPbkdf2Iterations}");
                }

                if (payload.TryGetProperty("then", out var then))
                {
                    ValidateThen(then, Join(path, "then"), errors);
                }

                return router.LaneOf(type);

            case EventTypes.TestFail or EventTypes.TestCrash:
                if (!payload.TryGetProperty("lane", out var lane) || lane.ValueKind != JsonValueKind.String || !Lanes.All.Contains(lane.GetString()))
                {
                    Add(errors, Join(path, "lane"), "is required and must be \"cpu\" or \"io\"");
                    return null;
                }

                if (payload.TryGetProperty("failTimes", out var failTimes)
                    && (failTimes.ValueKind != JsonValueKind.Number || !failTimes.TryGetInt32(out var times) || times is < 0 or > MaxTestFailTimes))
                {
                    Add(errors, Join(path, "failTimes"), $"must be a whole number from 0 to {MaxTestFailTimes}");
                }

                return lane.GetString();

            default: // webhook.post and noop.*: any JSON object is a valid body
                return router.LaneOf(type);
        }
    }

    private static string Join(string path, string member) =>
        path.Length == 0 ? (member.Length == 0 ? "$" : member) : (member.Length == 0 ? path : $"{path}.{member}");

    private static void Add(Dictionary<string, string[]> errors, string key, string message) =>
        errors[key] = errors.TryGetValue(key, out var existing) ? [.. existing, message] : [message];

    private static string Truncate(string value) => value.Length <= 64 ? value : value[..64] + "…";
}
