using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Aspire.Hosting.Testing;
using EventPipeline.Bench.Cli;
using EventPipeline.Bench.Observe;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace EventPipeline.Bench.Target;

/// <summary>
/// Starts the whole system from the real AppHost (as tests/EndToEnd.Tests does): brokers as local executables with
/// their data in a temp directory, fresh API keys, the services in the configuration this tool was built in.
/// </summary>
public static class AppHostLauncher
{
    public static async Task<PipelineTarget> StartAsync(BenchOptions options, TextWriter log, CancellationToken cancellationToken)
    {
        var data = Directory.CreateTempSubdirectory("ep-bench-");
        var submitKey = "bench-submit-" + Guid.NewGuid().ToString("N");
        var adminKey = "bench-admin-" + Guid.NewGuid().ToString("N");
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.AppHost>(
        [
            "Brokers:Mode=Executables",
            $"Brokers:DataDirectory={data.FullName}",
            $"TestEvents:Enabled={(options.TestEvents ? "true" : "false")}",
            // The chaos nemesis restarts what it kills itself: an AppHost restart racing its Start would recreate a
            // worker it had just started (and a measured run wants no restarts it did not ask for).
            "Workers:RestartOnCrash=false",
            $"Parameters:api-key-submit={submitKey}",
            $"Parameters:api-key-admin={adminKey}",
            "Parameters:redis-password=bench-redis-" + Guid.NewGuid().ToString("N")[..12],
            "Parameters:rabbitmq-password=bench-rabbit-" + Guid.NewGuid().ToString("N")[..12],
            "ASPIRE_VERSION_CHECK_DISABLED=true",
            $"Logging:LogLevel:Default={(options.Verbose ? "Information" : "Warning")}",
            .. options.AppHostArguments,
        ], cancellationToken);
        // The services' and brokers' console output (AppHost.Resources.*) and the health checks that fail by design
        // while the brokers boot would bury the progress line; --verbose shows them.
        var quiet = options.Verbose ? LogLevel.Information : LogLevel.None;
        builder.Services.AddLogging(logging => logging
            .SetMinimumLevel(LogLevel.Warning)
            .AddFilter("AppHost.Resources", quiet)
            .AddFilter("Aspire.Hosting", options.Verbose ? LogLevel.Information : LogLevel.Error)
            .AddFilter("Microsoft.Extensions.Diagnostics.HealthChecks", quiet));
        foreach (var project in builder.Resources.OfType<ProjectResource>())
        {
            // Aspire points every service at the dashboard's OTLP endpoint, exporting each second; a bench starts no
            // dashboard, so each export would fail and cost CPU that no deployment pays. Without the endpoint the
            // services do not export OTLP (ServiceDefaults); their /metrics stay, scraped by Prometheus as usual.
            project.Annotations.Add(new EnvironmentCallbackAnnotation(env => env.Remove("OTEL_EXPORTER_OTLP_ENDPOINT")));
        }

        foreach (var (resource, name, value) in options.Settings)
        {
            var target = builder.Resources.OfType<IResourceWithEnvironment>().FirstOrDefault(r => r.Name == resource)
                ?? throw new UsageException($"--set: no resource '{resource}' takes environment variables");
            builder.CreateResourceBuilder(target).WithEnvironment(name, value);
            log.WriteLine($"set {resource}: {name}={value}");
        }

        var app = await builder.BuildAsync(cancellationToken);
        var started = System.Diagnostics.Stopwatch.StartNew();
        log.WriteLine($"starting the AppHost (brokers as executables, data in {data.FullName}) …");
        using var startup = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        startup.CancelAfter(TimeSpan.FromMinutes(4));
        try
        {
            await app.StartAsync(startup.Token);
            // The brokers first: a service waits for them (WaitFor), so a broker that failed shows as the service failing.
            foreach (var resource in PipelineTarget.Resources.OrderBy(r => r is "redis" or "rabbitmq" ? 0 : 1))
            {
                await app.ResourceNotifications.WaitForResourceHealthyAsync(resource, startup.Token);
            }
        }
        catch (Exception ex) when (ex is DistributedApplicationException or OperationCanceledException)
        {
            // The services' console output is filtered out above (it would bury the progress line); a start that failed
            // is the one time it is needed, or the failure says nothing about its cause. Then nothing is left running.
            log.WriteLine($"the AppHost did not start: {ex.Message}");
            await WriteResourceStatesAsync(app, log);
            await app.StopAsync(CancellationToken.None);
            await app.DisposeAsync();
            try
            {
                data.Delete(recursive: true);
            }
            catch (IOException)
            {
            }

            throw;
        }

        var pids = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var resource in PipelineTarget.Resources)
        {
            if (app.ResourceNotifications.TryGetCurrentState(resource, out var state)
                && state.Snapshot.Properties.FirstOrDefault(p => p.Name == "executable.pid")?.Value is { } pid
                && int.TryParse(Convert.ToString(pid, System.Globalization.CultureInfo.InvariantCulture), out var value))
            {
                pids[resource] = value;
            }
        }

        var api = options.ViaProxy ? app.GetEndpoint("producer-api", "http") : DirectEndpoint(app, pids, "producer-api");
        var downstream = app.GetEndpoint("downstream", "http");
        var redis = await app.GetConnectionStringAsync("redis", cancellationToken);
        log.WriteLine($"AppHost up in {started.Elapsed.TotalSeconds:F1} s; API at {api}{(options.ViaProxy ? " (through Aspire's proxy)" : " (direct, no proxy)")}");

        return new PipelineTarget(api, submitKey, redis, downstream, pids, "started here through the AppHost", async () =>
        {
            await app.StopAsync();
            await app.DisposeAsync();
            try
            {
                data.Delete(recursive: true);
            }
            catch (IOException)
            {
                // A broker may still be flushing: the temp directory is left behind rather than failing the run.
            }
        })
        {
            AdminKey = adminKey,
            App = app,
        };
    }

    /// <summary>
    /// The service's own listening address, read from its environment: in production nothing sits between a client
    /// and the API, so the load should not go through Aspire's development proxy either.
    /// </summary>
    private static Uri DirectEndpoint(DistributedApplication app, IReadOnlyDictionary<string, int> pids, string resource)
    {
        if (pids.TryGetValue(resource, out var root) && ProcFs.IsAvailable)
        {
            foreach (var pid in ProcFs.ServiceProcesses(root))
            {
                var urls = ProcFs.EnvironmentVariable(pid, "ASPNETCORE_URLS");
                var first = urls?.Split(';').FirstOrDefault(u => u.StartsWith("http://", StringComparison.Ordinal));
                if (first is not null)
                {
                    return new Uri(first.Replace("://+", "://localhost").Replace("://*", "://localhost"));
                }
            }
        }

        return app.GetEndpoint(resource, "http");
    }

    /// <summary>Every resource's state, exit code and health, and the log tail of each that is not running healthy.</summary>
    private static async Task WriteResourceStatesAsync(DistributedApplication app, TextWriter log)
    {
        foreach (var resource in app.Services.GetRequiredService<DistributedApplicationModel>().Resources)
        {
            if (!app.ResourceNotifications.TryGetCurrentState(resource.Name, out var current))
            {
                log.WriteLine($"  {resource.Name}: no state");
                continue;
            }

            var snapshot = current.Snapshot;
            log.WriteLine($"  {resource.Name}: state {snapshot.State?.Text ?? "(none)"}, exit code {snapshot.ExitCode?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "-"}, health {snapshot.HealthStatus?.ToString() ?? "-"}");
            if (snapshot.State?.Text != KnownResourceStates.Running || snapshot.HealthStatus is not null and not Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Healthy)
            {
                await WriteResourceLogAsync(app, resource, log);
            }
        }
    }

    /// <summary>The last lines of a resource's console log (what the dashboard shows), the AppHost's own lines about it included.</summary>
    private static async Task WriteResourceLogAsync(DistributedApplication app, IResource resource, TextWriter log)
    {
        var name = resource.Name;
        var lines = new List<string>();
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(3));
        try
        {
            await foreach (var batch in app.Services.GetRequiredService<ResourceLoggerService>().GetAllAsync(resource).WithCancellation(deadline.Token))
            {
                lines.AddRange(batch.Select(l => l.Content));
            }
        }
        catch (OperationCanceledException)
        {
            // what arrived within the deadline is written below
        }

        log.WriteLine($"  {name}: the last {Math.Min(lines.Count, 60)} of its {lines.Count} log lines:");
        foreach (var line in lines.TakeLast(60))
        {
            log.WriteLine($"    {name}: {line}");
        }
    }
}
