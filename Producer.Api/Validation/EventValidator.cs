using System.Text.Json;
using System.Text.RegularExpressions;
using EventPipeline.Contracts;

namespace EventPipeline.Producer.Validation;

/// <summary>An event that passed validation and has a lane: ready to be handed to its broker.</summary>
/// <param name="ClientGivenId">true when the client chose the id: a repeat of that id is a duplicate, not a new event.</param>
/// <param name="Target">the allow-listed delivery URL of an I/O event, or null for the worker's configured downstream.</param>
public sealed record ValidatedEvent(string Id, string Type, string Lane, string Payload, bool ClientGivenId = false, string? Target = null);

/// <summary>
/// Checks one event object (<c>{"id"?, "type", "payload"}</c>) and its type's payload. Errors are keyed by JSON path
/// (<c>payload.iterations</c>, <c>events[3].type</c>) so a client sees exactly what to fix.
/// </summary>
public sealed partial class EventValidator(EventRouter router, DownstreamTargets targets)
{
    public const int MaxIdLength = 128;
    public const int MaxTestFailTimes = 1000;
    public const int MaxPbkdf2Iterations = 10_000_000;
    public const int MaxPbkdf2DataLength = 65_536;

    [GeneratedRegex("^[A-Za-z0-9._:-]+$")]
    private static partial Regex IdPattern();

    public ValidatedEvent? Validate(JsonElement element, string path, Dictionary<string, string[]> errors)
    {
        try
        {
            return ValidateEvent(element, path, errors);
        }
        catch (InvalidOperationException)
        {
            // Valid JSON can still hold a string that is not valid UTF-16 (an escaped lone surrogate, "\ud800"):
            // reading it as text throws. Such an event is the client's mistake, not a server error.
            Add(errors, Join(path, ""), "contains a string with an invalid escape (a lone UTF-16 surrogate)");
            return null;
        }
    }

    private ValidatedEvent? ValidateEvent(JsonElement element, string path, Dictionary<string, string[]> errors)
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

        if (errors.Count != before || type is null || lane is null)
        {
            return null;
        }

        return new ValidatedEvent(id ?? Guid.CreateVersion7().ToString("N"), type, lane, payload.GetRawText(), id is not null, target);
    }

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
