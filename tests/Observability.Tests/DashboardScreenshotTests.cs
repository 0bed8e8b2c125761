using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Microsoft.Playwright;

namespace EventPipeline.Observability.Tests;

/// <summary>The Aspire dashboard of the running AppHost, seen in a real browser (Debian's chromium through Playwright).</summary>
[Collection(ObservedAppHostCollection.Name)]
public sealed class DashboardScreenshotTests(ObservedAppHostFixture fixture)
{
    [Fact]
    public async Task Aspire_dashboard_shows_every_resource_running()
    {
        using var deadline = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        foreach (var name in ObservedAppHostFixture.ResourceNames)
        {
            await fixture.App.ResourceNotifications.WaitForResourceAsync(name, KnownResourceStates.Running, deadline.Token);
        }

        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = Browser.ChromiumPath, Headless = true, Args = Browser.ChromiumArgs });
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

        var path = Browser.ScreenshotPath("aspire-dashboard-resources.png");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        await page.ScreenshotAsync(new() { Path = path, FullPage = true });
        Assert.True(new FileInfo(path).Length > 10_000, "the screenshot should hold a rendered page");
    }

    /// <summary>The operator's links (with their display text) and the API's commands, in the dashboard itself.</summary>
    [Fact]
    public async Task Aspire_dashboard_shows_the_operator_links_and_commands()
    {
        using var deadline = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        foreach (var name in ObservedAppHostFixture.ResourceNames)
        {
            await fixture.App.ResourceNotifications.WaitForResourceAsync(name, KnownResourceStates.Running, deadline.Token);
        }

        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = Browser.ChromiumPath, Headless = true, Args = Browser.ChromiumArgs });
        var page = await browser.NewPageAsync(new() { ViewportSize = new() { Width = 1900, Height = 1000 } });
        await page.GotoAsync(fixture.DashboardUrl.ToString(), new() { Timeout = 60_000 });

        foreach (var link in new[] { "API reference (Scalar)", "OpenAPI document", "Prometheus graph", "Prometheus alerts", "RabbitMQ management" })
        {
            var anchor = page.Locator("a", new() { HasTextString = link }).First;
            await Assertions.Expect(anchor).ToBeVisibleAsync(new() { Timeout = 60_000 });
            Assert.StartsWith("http://", await anchor.GetAttributeAsync("href"));
        }

        var path = Browser.ScreenshotPath("aspire-dashboard-links.png");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        await page.ScreenshotAsync(new() { Path = path, FullPage = true });
        Assert.True(new FileInfo(path).Length > 10_000, "the screenshot should hold a rendered page");
    }
}

/// <summary>Debian's chromium driven by Playwright's bundled driver; no browser is ever downloaded.</summary>
public static class Browser
{
    public const string ChromiumPath = "/usr/bin/chromium";

    /// <summary>
    /// Where a screenshot goes: artifacts/screenshots on every run, docs/images (the README's pictures) only when
    /// UPDATE_DOC_IMAGES=1, so a test run does not rewrite committed files.
    /// </summary>
    public static string ScreenshotPath(string fileName) =>
        Environment.GetEnvironmentVariable("UPDATE_DOC_IMAGES") == "1"
            ? Repository.PathOf("docs", "images", fileName)
            : Repository.PathOf("artifacts", "screenshots", fileName);

    public static readonly string[] ChromiumArgs =
        ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"];

    /// <summary>Saves Prometheus's own graph of a query (the image in docs/observability.md), once the test checked what it shows.</summary>
    public static async Task ScreenshotPrometheusGraphAsync(Uri prometheus, string promql, string range, string fileName)
    {
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = ChromiumPath, Headless = true, Args = ChromiumArgs });
        var page = await browser.NewPageAsync(new() { ViewportSize = new() { Width = 1400, Height = 800 } });
        var url = new Uri(prometheus, $"/graph?g0.expr={Uri.EscapeDataString(promql)}&g0.tab=0&g0.range_input={range}&g0.stacked=0");
        await page.GotoAsync(url.ToString(), new() { Timeout = 60_000 });
        // Debian's Prometheus serves the classic UI, which draws the graph as SVG paths (one per series).
        await Assertions.Expect(page.Locator("svg path").First).ToBeVisibleAsync(new() { Timeout = 60_000 });
        var path = ScreenshotPath(fileName);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        await page.ScreenshotAsync(new() { Path = path, FullPage = true });
    }
}
