using System.Text.Json;
using System.Text.Json.Nodes;
using EventPipeline.Contracts;
using EventPipeline.Worker.Cpu.Work;

namespace EventPipeline.Worker.Cpu.Forward;

/// <summary>
/// The optional <c>then</c> of a CPU event's payload: <c>{"type": "webhook.post", "payload": {...}, "target"?: url}</c>.
/// When the CPU work succeeds, an I/O-lane event of that type is published whose body is <c>then.payload</c> with a
/// <c>source</c> object added (<c>{"id", "type", "result"}</c> of the CPU event), under the derived id <c>{id}.then</c>,
/// addressed to <c>then.target</c> when the client named one — the API allow-listed it, Worker.Io checks it again —
/// and to Worker.Io's configured downstream otherwise.
/// </summary>
/// <param name="Target">the delivery URL the client named, or null for the configured downstream.</param>
public sealed record NextStage(string Type, JsonObject Payload, string? Target = null)
{
    public const string Property = "then";
    public const string IdSuffix = ".then";
    public const string SourceProperty = "source";

    /// <summary>I/O-lane types a CPU event may hand its result on to (Worker.Io runs these).</summary>
    public static readonly IReadOnlyList<string> AllowedTypes = [EventTypes.WebhookPost, EventTypes.NoopIo];

    public static string DerivedId(string eventId) => eventId + IdSuffix;

    /// <summary>
    /// Whether the payload is an object with a <c>then</c> property (however its name is escaped), read without
    /// building a tree: every event's payload is looked at, few have one. A malformed payload answers true, so that
    /// <see cref="Parse"/> decides as it always did.
    /// </summary>
    internal static bool HasTopLevelThen(string payload)
    {
        var bytes = System.Buffers.ArrayPool<byte>.Shared.Rent(System.Text.Encoding.UTF8.GetMaxByteCount(payload.Length));
        try
        {
            var length = System.Text.Encoding.UTF8.GetBytes(payload, bytes);
            var reader = new Utf8JsonReader(bytes.AsSpan(0, length));
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return false;
            }

            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                if (reader.ValueTextEquals(Property))
                {
                    return true;
                }

                reader.Read();
                reader.Skip();
            }

            return false;
        }
        catch (JsonException)
        {
            return true;
        }
        catch (InvalidOperationException) when (HasEscapedLoneSurrogate(payload))
        {
            // A name .NET cannot compare as text (an escaped lone surrogate) before any "then": Parse reads the payload
            // as the API did (from the end, as JsonElement looks names up) and decides. Any other InvalidOperationException
            // is a defect and is not taken for this.
            return true;
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(bytes, clearArray: true);
        }
    }

    /// <returns>null when the payload has no <c>then</c>.</returns>
    /// <exception cref="PermanentEventException">a <c>then</c> that can never be forwarded.</exception>
    public static NextStage? Parse(string payload) => Parse(payload, Read);

    /// <summary><see cref="Parse(string)"/> with the step that reads <c>then</c> from the parsed payload given (tests make it fail).</summary>
    internal static NextStage? Parse(string payload, Func<JsonElement, NextStage?> read)
    {
        if (!HasTopLevelThen(payload))
        {
            return null; // most payloads: no tree of the whole payload built for nothing
        }

        // Read as the API validated it (Producer.Api/Validation/EventValidator.cs, JsonElement): a name may repeat and
        // the last one counts. A JsonObject's own lookup throws on a repeated name instead (dotnet/runtime#70604), which
        // failed such an event transiently until it was dead-lettered.
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(payload);
        }
        catch (JsonException)
        {
            return null; // the work itself reports a malformed payload
        }

        using (document)
        {
            try
            {
                return read(document.RootElement);
            }
            catch (InvalidOperationException ex) when (HasEscapedLoneSurrogate(payload))
            {
                // JSON may escape a lone surrogate (the API lets it through where it reads no string); .NET cannot read it
                // as text. No retry makes it readable: a permanent failure, not a transient one retried to the limit.
                // Only then: any other InvalidOperationException is a defect, not to be dead-lettered as bad Unicode.
                throw new PermanentEventException($"payload.then holds text that is not valid Unicode: {ex.Message}");
            }
        }
    }

    /// <summary>
    /// Whether the JSON text escapes a UTF-16 surrogate without its pair (<c>\ud800</c> alone, or a low one first): the
    /// text .NET throws <see cref="InvalidOperationException"/> on when it reads or compares it as a string. Only looked
    /// at once such an exception was thrown, on JSON already parsed (so every backslash is inside a string).
    /// </summary>
    internal static bool HasEscapedLoneSurrogate(string json)
    {
        for (var i = json.IndexOf('\\'); i >= 0 && i < json.Length; i = json.IndexOf('\\', i))
        {
            if (!TryEscapedUnit(json, i, out var unit))
            {
                i += 2; // another escape (\\ among them): its two characters are skipped
                continue;
            }

            i += 6;
            if (char.IsLowSurrogate(unit))
            {
                return true;
            }

            if (char.IsHighSurrogate(unit))
            {
                if (!TryEscapedUnit(json, i, out var next) || !char.IsLowSurrogate(next))
                {
                    return true;
                }

                i += 6;
            }
        }

        return false;

        static bool TryEscapedUnit(string json, int at, out char unit)
        {
            unit = default;
            if (at + 6 > json.Length || json[at] != '\\' || json[at + 1] != 'u'
                || !ushort.TryParse(json.AsSpan(at + 2, 4), System.Globalization.NumberStyles.AllowHexSpecifier, System.Globalization.CultureInfo.InvariantCulture, out var value))
            {
                return false;
            }

            unit = (char)value;
            return true;
        }
    }

    private static NextStage? Read(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty(Property, out var then) || then.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        if (then.ValueKind != JsonValueKind.Object
            || !then.TryGetProperty("type", out var typeElement) || typeElement.ValueKind != JsonValueKind.String
            || typeElement.GetString() is not { } type || !AllowedTypes.Contains(type))
        {
            throw new PermanentEventException(
                $"payload.then must be an object with \"type\" one of {string.Join(", ", AllowedTypes)} and \"payload\" an object");
        }

        if (!then.TryGetProperty("payload", out var nextPayload) || nextPayload.ValueKind != JsonValueKind.Object)
        {
            throw new PermanentEventException("payload.then.payload is required and must be a JSON object");
        }

        string? target = null;
        if (then.TryGetProperty("target", out var targetElement) && targetElement.ValueKind != JsonValueKind.Null)
        {
            if (targetElement.ValueKind != JsonValueKind.String || string.IsNullOrEmpty(target = targetElement.GetString()))
            {
                throw new PermanentEventException("payload.then.target must be a string (an absolute http or https URL)");
            }
        }

        // The last of a repeated name, as the API read it; values below the top level are carried as written.
        var body = new JsonObject();
        foreach (var property in nextPayload.EnumerateObject())
        {
            body[property.Name] = JsonNode.Parse(property.Value.GetRawText());
        }

        return new NextStage(type, body, target);
    }

    /// <summary>The body the I/O lane delivers: <c>then.payload</c> plus the CPU event's id, type and result.</summary>
    public string BodyWith(string sourceId, string sourceType, string result)
    {
        var body = (JsonObject)Payload.DeepClone();
        body[SourceProperty] = new JsonObject { ["id"] = sourceId, ["type"] = sourceType, ["result"] = result };
        return body.ToJsonString();
    }
}
