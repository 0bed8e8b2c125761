using Aspire.Hosting;
using Aspire.Hosting.Testing;
using EventPipeline.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace EventPipeline.EndToEnd.Tests;

/// <summary>
/// The whole system, started once per test collection from the real AppHost through Aspire.Hosting.Testing: the
/// brokers as local executables on free ports with their data in a temp directory, test events enabled.
/// </summary>
public sealed class AppHostFixture : IAsyncLifetime
{
    private readonly ScratchDirectory _data = new("ep-e2e");
    private DistributedApplication? _app;

    public string SubmitKey { get; } = "submit-" + Guid.NewGuid().ToString("N");

    public string AdminKey { get; } = "admin-" + Guid.NewGuid().ToString("N");

    public DistributedApplication App => _app ?? throw new InvalidOperationException("not started");

    public HttpClient Api { get; private set; } = null!;

    public HttpClient Downstream { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.AppHost>(
            [
                .. AppHostArguments.ForTest(_data.Path, SubmitKey, AdminKey, "e2e"),
                // Someone else's failed Start leaves a crashed worker down this long before the restarter starts it
                // (CrashRestartTests; a minute by default). Long enough for a Start that works to show Running on a
                // loaded machine (DCP lagged 1.85 s once), short enough for a test.
                $"{CrashRestarts.OthersStartGraceSetting}=00:00:15",
            ]);
        builder.Services.AddLogging(logging => logging
            .SetMinimumLevel(LogLevel.Warning)
            // Brokers are unhealthy until they finished booting: expected, and noise in the test output.
            .AddFilter("Microsoft.Extensions.Diagnostics.HealthChecks", LogLevel.None));

        _app = await builder.BuildAsync();
        using var startup = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        await _app.StartAsync(startup.Token);
        foreach (var resource in new[] { "redis", "rabbitmq", "downstream", "producer-api", "worker-cpu", "worker-io" })
        {
            await _app.ResourceNotifications.WaitForResourceHealthyAsync(resource, startup.Token);
        }

        Api = _app.CreateHttpClient("producer-api");
        Api.DefaultRequestHeaders.Add("X-Api-Key", SubmitKey);
        Downstream = _app.CreateHttpClient("downstream");
    }

    public async Task DisposeAsync()
    {
        Api?.Dispose();
        Downstream?.Dispose();
        if (_app is not null)
        {
            await _app.StopAsync();
            await _app.DisposeAsync();
        }

        _data.Dispose();
    }
}

[CollectionDefinition(Name)]
public sealed class AppHostCollection : ICollectionFixture<AppHostFixture>
{
    public const string Name = "Running AppHost";
}
