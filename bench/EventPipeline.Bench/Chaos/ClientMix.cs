using System.Text.Json.Nodes;

namespace EventPipeline.Bench.Chaos;

/// <summary>How a request protects itself against being enqueued twice, which decides whether the client retries it.</summary>
public enum Guard
{
    /// <summary>No key, server-generated ids: nobody can repeat it, so the client does not retry (fate unknown on a timeout).</summary>
    None,

    /// <summary><c>Idempotency-Key</c> header: retried with the same key and body until answered, as docs/api.md says.</summary>
    Key,

    /// <summary>Client-given event ids (each id is its own key): retried the same way.</summary>
    ClientIds,
}

/// <summary>One planned event of an operation.</summary>
public sealed record PlannedEvent(string Type, JsonObject Payload, string? Id, bool Chains);

/// <summary>One client request: a single event or a batch, with its guard.</summary>
public sealed record ClientOperation(int Number, IReadOnlyList<PlannedEvent> Events, bool Batch, Guard Guard, string? Key, bool SendTwice)
{
    public string Label => $"op {Number} ({(Batch ? $"batch of {Events.Count}" : Events[0].Type)}, {Guard switch
    {
        Guard.Key => $"Idempotency-Key {Key}",
        Guard.ClientIds => "client ids",
        _ => "unguarded",
    }}{(SendTwice ? ", sent twice at once" : "")})";

    public byte[] Body()
    {
        JsonNode Event(PlannedEvent e)
        {
            var node = new JsonObject();
            if (e.Id is not null)
            {
                node["id"] = e.Id;
            }

            node["type"] = e.Type;
            node["payload"] = e.Payload.DeepClone();
            return node;
        }

        var root = Batch ? new JsonObject { ["events"] = new JsonArray([.. Events.Select(Event)]) } : Event(Events[0]);
        return System.Text.Encoding.UTF8.GetBytes(root.ToJsonString());
    }
}

/// <summary>
/// The operations a real client population sends, drawn from a seeded <see cref="Random"/>: single and batch
/// submissions to both lanes, most of them harmless, some chained (<c>then</c>), some made to fail for a while
/// (<c>simulate.failTimes</c> on a webhook, <c>test.fail</c> with <c>failTimes</c>) or for ever (<c>test.fail</c>),
/// guarded by an Idempotency-Key, by client-given ids, or not at all.
/// </summary>
public sealed class ClientMix(int seed, string runTag)
{
    private readonly Random _random = new(seed);

    public ClientOperation Next(int number)
    {
        var batch = _random.NextDouble() < 0.4;
        var count = batch ? _random.Next(2, 13) : 1;
        var roll = _random.NextDouble();
        var guard = roll < 0.45 ? Guard.Key : roll < 0.6 ? Guard.ClientIds : Guard.None;
        var events = new List<PlannedEvent>(count);
        for (var i = 0; i < count; i++)
        {
            var id = guard == Guard.ClientIds ? $"{runTag}-c{number}-{i}" : null;
            events.Add(NextEvent(id));
        }

        // A client that timed out and retried while its first try was still in flight, or a double click: two
        // identical requests at once. This is the race the idempotency guard exists for.
        var twice = guard != Guard.None && _random.NextDouble() < 0.15;
        return new ClientOperation(number, events, batch, guard, guard == Guard.Key ? $"{runTag}-k{number}" : null, twice);
    }

    private PlannedEvent NextEvent(string? id)
    {
        var pick = _random.Next(100);
        return pick switch
        {
            < 18 => new("noop.cpu", [], id, false),
            < 36 => new("noop.io", [], id, false),
            < 50 => new("hash.pbkdf2", new JsonObject { ["data"] = $"d{_random.Next(1_000_000)}", ["iterations"] = _random.Next(200, 2000) }, id, false),
            < 58 => new("hash.pbkdf2", new JsonObject
            {
                ["data"] = $"d{_random.Next(1_000_000)}",
                ["iterations"] = _random.Next(200, 2000),
                ["then"] = new JsonObject { ["type"] = "webhook.post", ["payload"] = new JsonObject { ["chained"] = true } },
            }, id, true),
            < 78 => new("webhook.post", new JsonObject { ["n"] = pick, ["simulate"] = new JsonObject { ["delayMs"] = _random.Next(0, 40) } }, id, false),
            // Fails fewer times than Worker.Io's 5 attempts: succeeds on a retry.
            < 86 => new("webhook.post", new JsonObject { ["simulate"] = new JsonObject { ["failTimes"] = _random.Next(1, 4) } }, id, false),
            // Fails more often than 5 attempts: dead-lettered; an operator's replay may bring it to success.
            < 90 => new("webhook.post", new JsonObject { ["simulate"] = new JsonObject { ["failTimes"] = _random.Next(6, 9) } }, id, false),
            // CPU lane: fails its first runs in a worker process (succeeds on a retry or on a replay), or always.
            < 95 => new("test.fail", new JsonObject { ["lane"] = "cpu", ["failTimes"] = _random.Next(1, 4) }, id, false),
            < 97 => new("test.fail", new JsonObject { ["lane"] = "cpu" }, id, false),
            _ => new("test.fail", new JsonObject { ["lane"] = "io" }, id, false),
        };
    }
}
