using EventPipeline.Producer.Validation;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.UnitTests;

public sealed class EventRouterTests
{
    internal static EventRouter Router(bool testEvents = false, Dictionary<string, string>? rules = null) => new(
        Options.Create(new RoutingOptions
        {
            Rules = rules ?? new() { ["hash.*"] = "cpu", ["noop.cpu"] = "cpu", ["webhook.*"] = "io", ["noop.io"] = "io" },
        }),
        Options.Create(new TestEventsOptions { Enabled = testEvents }));

    [Theory]
    [InlineData("hash.pbkdf2", "cpu")]
    [InlineData("webhook.post", "io")]
    [InlineData("noop.cpu", "cpu")]
    [InlineData("noop.io", "io")]
    public void Type_is_routed_to_its_configured_lane(string type, string lane) =>
        Assert.Equal(lane, Router().LaneOf(type));

    [Fact]
    public void Exact_rule_wins_over_wildcard()
    {
        var router = Router(rules: new() { ["webhook.*"] = "io", ["webhook.post"] = "cpu" });

        Assert.Equal("cpu", router.LaneOf("webhook.post"));
        Assert.Equal("io", router.LaneOf("webhook.other"));
    }

    [Fact]
    public void Longest_wildcard_wins()
    {
        var router = Router(rules: new() { ["a.*"] = "io", ["a.b.*"] = "cpu" });

        Assert.Equal("cpu", router.LaneOf("a.b.c"));
        Assert.Equal("io", router.LaneOf("a.x"));
    }

    [Theory]
    [InlineData("digest.sha1")]
    [InlineData("hash")]
    [InlineData("")]
    public void Type_without_a_rule_has_no_lane(string type) => Assert.Null(Router().LaneOf(type));

    [Fact]
    public void Rule_naming_an_unknown_lane_routes_nowhere() =>
        Assert.Null(Router(rules: new() { ["hash.*"] = "gpu" }).LaneOf("hash.pbkdf2"));

    [Fact]
    public void Test_types_are_known_only_when_enabled()
    {
        Assert.DoesNotContain("test.fail", Router(testEvents: false).KnownTypes);
        Assert.Contains("test.fail", Router(testEvents: true).KnownTypes);
        Assert.Contains("test.crash", Router(testEvents: true).KnownTypes);
    }

    [Fact]
    public void Implemented_type_without_a_route_is_not_known() =>
        Assert.DoesNotContain("webhook.post", Router(rules: new() { ["hash.*"] = "cpu" }).KnownTypes);
}
