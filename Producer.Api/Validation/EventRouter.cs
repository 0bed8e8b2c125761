using EventPipeline.Contracts;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Validation;

public sealed class RoutingOptions
{
    /// <summary>Event type (exact, or a prefix ending in <c>.*</c>) → lane (<c>cpu</c> or <c>io</c>).</summary>
    public Dictionary<string, string> Rules { get; set; } = new(StringComparer.Ordinal);
}

public sealed class TestEventsOptions
{
    /// <summary>Accept <c>test.fail</c> and <c>test.crash</c>. Never on in production configuration.</summary>
    public bool Enabled { get; set; }
}

/// <summary>Decides the lane of an event type from the routing table in configuration.</summary>
public sealed class EventRouter(IOptions<RoutingOptions> routing, IOptions<TestEventsOptions> testEvents)
{
    /// <summary>Types that have a payload validator; a type must also have a route to be accepted.</summary>
    private static readonly string[] ImplementedTypes = [EventTypes.Pbkdf2, EventTypes.WebhookPost, EventTypes.NoopCpu, EventTypes.NoopIo];

    // Built once: the routing table and the test switch are read once (IOptions), and every submitted event is checked
    // against this list (building it per event cost ~2 % of the API's CPU per single POST, Session 7 of docs/benchmarks.md).
    private IReadOnlyList<string>? _knownTypes;

    public IReadOnlyList<string> KnownTypes => _knownTypes ??=
        [.. ImplementedTypes.Where(t => LaneOf(t) is not null),
         .. testEvents.Value.Enabled ? new[] { EventTypes.TestFail, EventTypes.TestCrash } : []];

    public bool TestEventsEnabled => testEvents.Value.Enabled;

    /// <summary>The lane for a known type, or null when the type is unknown or has no route.</summary>
    public string? LaneOf(string type)
    {
        var rules = routing.Value.Rules;
        if (rules.TryGetValue(type, out var exact))
        {
            return Normalize(exact);
        }

        var wildcard = rules
            .Where(r => r.Key.EndsWith(".*", StringComparison.Ordinal) && type.StartsWith(r.Key[..^1], StringComparison.Ordinal))
            .OrderByDescending(r => r.Key.Length)
            .Select(r => r.Value)
            .FirstOrDefault();
        return wildcard is null ? null : Normalize(wildcard);
    }

    private static string? Normalize(string lane) => Lanes.All.Contains(lane) ? lane : null;
}
