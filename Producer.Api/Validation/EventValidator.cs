using System.Text.Json;
using System.Text.RegularExpressions;
using EventPipeline.Contracts;

namespace EventPipeline.Producer.Validation;

/// <summary>An event that passed validation and has a lane: ready to be handed to its broker.</summary>
public sealed record ValidatedEvent(string Id, string Type, string Lane, string Payload);

/// <summary>
/// Checks one event object (<c>{"id"?, "type", "payload"}</c>) and its type's payload. Errors are keyed by JSON path
/// (<c>payload.iterations</c>, <c>events[3].type</c>) so a client sees exactly what to fix.
/// </summary>
public sealed partial class EventValidator(EventRouter router)
{
    public const int MaxIdLength = 128;
    public const int MaxPbkdf2Iterations = 10_000_000;
    public const int MaxPbkdf2DataLength = 65_536;

    [GeneratedRegex("^[A-Za-z0-9._:-]+$")]
    private static partial Regex IdPattern();

    public ValidatedEvent? Validate(JsonElement element, string path, Dictionary<string, string[]> errors)
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

        if (errors.Count != before || type is null || lane is null)
        {
            return null;
        }

        return new ValidatedEvent(id ?? Guid.CreateVersion7().ToString("N"), type, lane, payload.GetRawText());
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

                return router.LaneOf(type);

            case EventTypes.TestFail or EventTypes.TestCrash:
                if (!payload.TryGetProperty("lane", out var lane) || lane.ValueKind != JsonValueKind.String || !Lanes.All.Contains(lane.GetString()))
                {
                    Add(errors, Join(path, "lane"), "is required and must be \"cpu\" or \"io\"");
                    return null;
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
