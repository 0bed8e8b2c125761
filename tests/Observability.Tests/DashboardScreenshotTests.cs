using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Microsoft.Playwright;

namespace EventPipeline.Observability.Tests;

/// <summary>The Aspire dashboard of the running AppHost, seen in a real browser (Debian's chromium through Playwright).</summary>
[Collection(ObservedAppHostCollection.Name)]
public sealed class DashboardScreenshotTests(ObservedAppHostFixture fixture)
{
    public const string ChromiumPath = "/usr/bin/chromium";

    public static readonly string[] ChromiumArgs =
        ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"];

    [Fact]
    public async Task Aspire_dashboard_shows_every_resource_running()
    {
        using var deadline = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        foreach (var name in ObservedAppHostFixture.ResourceNames)
        {
            await fixture.App.ResourceNotifications.WaitForResourceAsync(name, KnownResourceStates.Running, deadline.Token);
        }

        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = ChromiumPath, Headless = true, Args = ChromiumArgs });
        var page = await browser.NewPageAsync(new() { ViewportSize = new() { Width = 1600, Height = 900 } });
        await page.GotoAsync(fixture.DashboardUrl.ToString(), new() { Timeout = 60_000 });

        foreach (var name in ObservedAppHostFixture.ResourceNames)
        {
            await Assertions.Expect(page.GetByText(name, new() { Exact = true }).First).ToBeVisibleAsync(new() { Timeout = 60_000 });
        }

        await Eventually.ReturnsAsync(
            () => page.GetByText("Running", new() { Exact = true }).CountAsync(),
            running => running >= ObservedAppHostFixture.ResourceNames.Length,
            TimeSpan.FromSeconds(60), "every resource row to show Running", TimeSpan.FromMilliseconds(500));
        foreach (var bad in new[] { "Exited", "Failed to start", "Finished", "Unhealthy" })
        {
            Assert.Equal(0, await page.GetByText(bad, new() { Exact = true }).CountAsync());
        }

        var path = Repository.PathOf("docs", "images", "aspire-dashboard-resources.png");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        await page.ScreenshotAsync(new() { Path = path, FullPage = true });
        Assert.True(new FileInfo(path).Length > 10_000, "the screenshot should hold a rendered page");
    }
}
