using Aspire.Hosting;
using Aspire.Hosting.Testing;
using EventPipeline.Testing;
using Microsoft.Extensions.Configuration;

namespace EventPipeline.EndToEnd.Tests;

/// <summary>
/// <c>Workers:OthersStartGrace</c> is checked when the model is built (review of s11-restarter2, M1): a bare number
/// binds as days, and zero would bring back the double start the grace prevents, so the AppHost refuses both and names
/// the setting. Nothing is started.
/// </summary>
public sealed class RestarterSettingTests : IDisposable
{
    private readonly ScratchDirectory _data = new("ep-grace");

    public void Dispose() => _data.Dispose();

    private async Task<DistributedApplication> BuildAsync(string grace)
    {
        List<string> args = [.. AppHostArguments.ForTest(_data.Path, "submit-" + Guid.NewGuid().ToString("N"), "admin-" + Guid.NewGuid().ToString("N"), "grace")];
        args.Add($"{CrashRestarts.OthersStartGraceSetting}={grace}");
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.AppHost>([.. args]);
        return await builder.BuildNeverStartedAsync();
    }

    [Theory]
    [InlineData("15")]
    [InlineData("00:00:00")]
    [InlineData("-00:00:30")]
    [InlineData("01:00:00")]
    [InlineData("soon")]
    public async Task A_grace_that_is_not_hh_mm_ss_within_1_s_to_10_min_is_refused_naming_the_setting(string grace)
    {
        var refused = await Assert.ThrowsAsync<DistributedApplicationException>(async () => await (await BuildAsync(grace)).DisposeAsync());
        Assert.Contains(CrashRestarts.OthersStartGraceSetting, refused.Message, StringComparison.Ordinal);
        Assert.Contains($"'{grace}'", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_grace_written_hh_mm_ss_within_range_is_taken()
    {
        await using var app = await BuildAsync("00:00:30");
        Assert.Equal(TimeSpan.FromSeconds(30), CrashRestarts.OthersStartGraceFrom(
            new ConfigurationBuilder()
                .AddInMemoryCollection([new(CrashRestarts.OthersStartGraceSetting, "00:00:30")]).Build()));
    }
}
