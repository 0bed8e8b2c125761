using System.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using OpenTelemetry.Logs;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;

namespace EventPipeline.ServiceDefaults;

/// <summary>Bound on the last telemetry export when a service stops (configuration section <c>Telemetry</c>).</summary>
public sealed class TelemetryShutdownOptions
{
    public const string SectionName = "Telemetry";

    /// <summary>
    /// How long the last export of traces, metrics and logs may take in all once the service has stopped (they run side
    /// by side). What a collector has not taken by then is dropped: a stop that outlasts the orchestrator's window is
    /// killed (Aspire's ~6 s, Kubernetes' grace period) and reported failed.
    /// </summary>
    public TimeSpan ShutdownFlushTimeout { get; set; } = TimeSpan.FromSeconds(1);
}

/// <summary>
/// Shuts the OpenTelemetry providers down together, within <see cref="TelemetryShutdownOptions.ShutdownFlushTimeout"/>,
/// once every hosted service has stopped (so their last spans, logs and measurements are in the export).
/// </summary>
/// <remarks>
/// Kept because the SDK cannot bound the total: each provider, disposed with the service container, waits up to 5 s for
/// its last export (a fixed grace in TracerProviderSdk, MeterProviderSdk and LoggerProviderSdk), one after the other,
/// and the exporter's timeout (<c>OTEL_EXPORTER_OTLP_TIMEOUT</c>) bounds each export, not the three. With a collector
/// that did not answer, worker-io took 10.6 s after SIGTERM (Worker.Io.FunctionalTests' WorkerCrashTests) and Aspire
/// killed it when stopped from the dashboard. A provider already shut down here makes the later dispose return at once.
/// A host that fails to start never raises ApplicationStopped: its providers are then disposed as the SDK does it.
/// </remarks>
internal sealed partial class TelemetryShutdown(
    IHostApplicationLifetime lifetime,
    IServiceProvider services,
    IOptions<TelemetryShutdownOptions> options,
    ILogger<TelemetryShutdown> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        lifetime.ApplicationStopped.Register(Flush);
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private void Flush()
    {
        var budget = options.Value.ShutdownFlushTimeout;
        var milliseconds = (int)Math.Ceiling(budget.TotalMilliseconds);
        var tracer = services.GetService<TracerProvider>();
        var meter = services.GetService<MeterProvider>();
        var logs = services.GetService<LoggerProvider>();
        var watch = Stopwatch.StartNew();
        // Side by side: one budget for the three, not one each. On threads of their own: each blocks for up to the
        // budget, and on a loaded machine the thread pool handed out its third thread only after the budget had passed
        // (worker-io in the AppHost tests beside busy loops: 2,027 ms for a 1 s budget).
        var flushes = new[]
        {
            Task.Factory.StartNew(() => tracer?.Shutdown(milliseconds) ?? true, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default),
            Task.Factory.StartNew(() => meter?.Shutdown(milliseconds) ?? true, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default),
            Task.Factory.StartNew(() => logs?.Shutdown(milliseconds) ?? true, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default),
        };
        // Each Shutdown keeps to its timeout; the margin only guards against one that does not.
        var ended = Task.WaitAll(flushes, budget + TimeSpan.FromMilliseconds(250));
        // Judged by time, not by what Shutdown returns: the meter provider's is false whatever the collector did, since
        // the Prometheus exporter's pull-only reader refuses the collect its shutdown asks for outside a scrape.
        var complete = ended && watch.Elapsed < budget;
        if (complete)
        {
            LogFlushed(logger, watch.ElapsedMilliseconds);
        }
        else
        {
            LogFlushIncomplete(logger, budget, watch.ElapsedMilliseconds);
        }
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "Telemetry exported at shutdown in {ElapsedMs} ms")]
    private static partial void LogFlushed(ILogger logger, long elapsedMs);

    [LoggerMessage(Level = LogLevel.Warning,
        Message = "The last telemetry export did not finish within Telemetry:ShutdownFlushTimeout ({Budget}; {ElapsedMs} ms spent): what the collector had not taken is dropped")]
    private static partial void LogFlushIncomplete(ILogger logger, TimeSpan budget, long elapsedMs);
}
