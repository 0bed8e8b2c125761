using System.Net;
using Aspire.Hosting.ApplicationModel;

namespace EventPipeline.EndToEnd.Tests;

/// <summary>
/// The links the dashboard shows next to each resource are there, with their display text, and open the page they
/// name: the API's reference and OpenAPI document, Prometheus's graph and alerts, RabbitMQ's management UI.
/// </summary>
[Collection(AppHostCollection.Name)]
public sealed class ResourceUrlTests(AppHostFixture fixture)
{
    public static TheoryData<string, string, string> Links => new()
    {
        { "producer-api", "API reference (Scalar)", "/scalar" },
        { "producer-api", "OpenAPI document", "/openapi/v1.json" },
        { "prometheus", "Prometheus graph", "/graph" },
        { "prometheus", "Prometheus alerts", "/classic/alerts" }, // Debian's Prometheus serves only the classic UI
        { "rabbitmq", "RabbitMQ management", "/" },
    };

    [Theory]
    [MemberData(nameof(Links))]
    public async Task Dashboard_link_is_shown_with_its_text_and_opens_its_page(string resource, string text, string path)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        var update = await fixture.App.ResourceNotifications.WaitForResourceAsync(resource,
            e => e.Snapshot.Urls.Any(u => u.DisplayProperties.DisplayName?.StartsWith(text, StringComparison.Ordinal) == true && !u.IsInactive),
            timeout.Token);
        var url = new Uri(update.Snapshot.Urls.First(u => u.DisplayProperties.DisplayName!.StartsWith(text, StringComparison.Ordinal)).Url);
        Assert.Equal(path, url.AbsolutePath);
        Assert.True(url.IsLoopback, url.ToString());

        using var http = new HttpClient();
        using var response = await http.GetAsync(url, timeout.Token);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
    }
}
