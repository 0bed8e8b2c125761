using Aspire.Hosting;
using Aspire.Hosting.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace EventPipeline.EndToEnd.Tests;

/// <summary>
/// Builds the AppHost's model without starting it. Never started, so nothing to stop: without a short shutdown timeout a
/// second such model in the same process waited out the host's default 30 s on dispose (about a minute of the suite).
/// </summary>
internal static class NeverStartedModel
{
    public static Task<DistributedApplication> BuildNeverStartedAsync(this IDistributedApplicationTestingBuilder builder)
    {
        builder.Services.Configure<Microsoft.Extensions.Hosting.HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(2));
        return builder.BuildAsync();
    }
}
