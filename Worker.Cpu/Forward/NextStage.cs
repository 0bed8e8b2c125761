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
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(bytes, clearArray: true);
        }
    }

    /// <returns>null when the payload has no <c>then</c>.</returns>
    /// <exception cref="PermanentEventException">a <c>then</c> that can never be forwarded.</exception>
    public static NextStage? Parse(string payload)
    {
        if (!HasTopLevelThen(payload))
        {
            return null; // most payloads: no tree of the whole payload built for nothing
        }

        JsonNode? root;
        try
        {
            root = JsonNode.Parse(payload);
        }
        catch (JsonException)
        {
            return null; // the work itself reports a malformed payload
        }

        if (root is not JsonObject obj || !obj.TryGetPropertyValue(Property, out var then) || then is null)
        {
            return null;
        }

        if (then is not JsonObject thenObject
            || thenObject["type"] is not JsonValue typeValue || !typeValue.TryGetValue<string>(out var type)
            || !AllowedTypes.Contains(type))
        {
            throw new PermanentEventException(
                $"payload.then must be an object with \"type\" one of {string.Join(", ", AllowedTypes)} and \"payload\" an object");
        }

        if (thenObject["payload"] is not JsonObject nextPayload)
        {
            throw new PermanentEventException("payload.then.payload is required and must be a JSON object");
        }

        string? target = null;
        if (thenObject["target"] is { } targetNode)
        {
            if (targetNode is not JsonValue targetValue || !targetValue.TryGetValue(out target) || target.Length == 0)
            {
                throw new PermanentEventException("payload.then.target must be a string (an absolute http or https URL)");
            }
        }

        return new NextStage(type, (JsonObject)nextPayload.DeepClone(), target);
    }

    /// <summary>The body the I/O lane delivers: <c>then.payload</c> plus the CPU event's id, type and result.</summary>
    public string BodyWith(string sourceId, string sourceType, string result)
    {
        var body = (JsonObject)Payload.DeepClone();
        body[SourceProperty] = new JsonObject { ["id"] = sourceId, ["type"] = sourceType, ["result"] = result };
        return body.ToJsonString();
    }
}
