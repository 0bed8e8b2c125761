using System.Text.Json;
using EventPipeline.Producer.Validation;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.UnitTests;

/// <summary><c>notBefore</c>, <c>delay</c> and <c>expiresAt</c> at the door: the horizon, the past tolerance, and one start time only.</summary>
public sealed class TimingValidationTests
{
    private static (ValidatedEvent? Event, Dictionary<string, string[]> Errors) Validate(string timing)
    {
        var errors = new Dictionary<string, string[]>();
        using var document = JsonDocument.Parse("""{"type":"noop.cpu","payload":{},""" + timing + "}");
        var targets = new DownstreamTargets(Options.Create(new DownstreamTargetOptions()));
        var scheduling = Options.Create(new SchedulingOptions { MaxDelay = TimeSpan.FromDays(30), PastTolerance = TimeSpan.FromMinutes(5) });
        return (new EventValidator(EventRouterTests.Router(), targets, scheduling).Validate(document.RootElement, "", errors), errors);
    }

    private static string At(TimeSpan fromNow) => $"\"{DateTimeOffset.UtcNow + fromNow:yyyy-MM-ddTHH:mm:ss.fffZ}\"";

    [Fact]
    public void Delay_in_seconds_sets_the_start_that_many_seconds_from_now()
    {
        var before = DateTimeOffset.UtcNow;
        var (e, errors) = Validate("\"delay\":90.5");
        Assert.Empty(errors);
        Assert.InRange(e!.NotBefore!.Value, before.AddSeconds(90.5), DateTimeOffset.UtcNow.AddSeconds(90.5));
        Assert.True(e.IsTimed);
    }

    [Fact]
    public void NotBefore_a_little_in_the_past_means_now_and_further_back_is_refused()
    {
        var (recent, recentErrors) = Validate($"\"notBefore\":{At(TimeSpan.FromMinutes(-4))}");
        Assert.Empty(recentErrors);
        Assert.Null(recent!.NotBefore);
        Assert.False(recent.IsTimed);

        var (_, errors) = Validate($"\"notBefore\":{At(TimeSpan.FromMinutes(-6))}");
        Assert.Contains("notBefore", errors.Keys);
    }

    [Fact]
    public void NotBefore_past_the_horizon_is_refused_and_just_inside_it_is_kept()
    {
        Assert.Contains("notBefore", Validate($"\"notBefore\":{At(TimeSpan.FromDays(30.01))}").Errors.Keys);
        var (e, errors) = Validate($"\"notBefore\":{At(TimeSpan.FromDays(29.9))}");
        Assert.Empty(errors);
        Assert.NotNull(e!.NotBefore);
    }

    [Theory]
    [InlineData("\"notBefore\":\"2030-01-01\"")]
    [InlineData("\"notBefore\":\"2030-01-01T00:00:00\"")]
    [InlineData("\"notBefore\":\"01/01/2030 00:00:00 +00:00\"")]
    [InlineData("\"notBefore\":1893456000")]
    public void NotBefore_must_be_RFC_3339_with_an_offset(string timing) =>
        Assert.Contains("notBefore", Validate(timing).Errors.Keys);

    [Fact]
    public void ExpiresAt_before_the_start_or_in_the_past_is_refused_and_after_it_is_kept()
    {
        Assert.Contains("expiresAt", Validate($"\"delay\":60,\"expiresAt\":{At(TimeSpan.FromSeconds(30))}").Errors.Keys);
        Assert.Contains("expiresAt", Validate($"\"expiresAt\":{At(TimeSpan.FromSeconds(-1))}").Errors.Keys);
        var (e, errors) = Validate($"\"delay\":60,\"expiresAt\":{At(TimeSpan.FromSeconds(120))}");
        Assert.Empty(errors);
        Assert.True(e!.ExpiresAt > e.NotBefore);
    }
}
