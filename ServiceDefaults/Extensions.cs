using EventPipeline.ServiceDefaults;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Logging;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;

namespace Microsoft.Extensions.Hosting;

/// <summary>
/// What every EventPipeline service shares: OpenTelemetry (OTLP + Prometheus), health endpoints, service discovery
/// and HttpClient defaults. Each service calls <see cref="AddServiceDefaults{TBuilder}"/> and <see cref="MapDefaultEndpoints"/>.
/// Per event it records only what a dashboard, an alert or a trace hop uses: MassTransit's meter and RabbitMQ.Client's
/// per-message publish spans are opt-in (docs/observability.md).
/// </summary>
public static class Extensions
{
    private const string HealthEndpointPath = "/health/ready";
    private const string AlivenessEndpointPath = "/health/live";
    private const string LiveTag = "live";
    private const string MassTransitMeterName = "MassTransit";
    private const string RabbitMqClientDisableTracingKey = "Aspire:RabbitMQ:Client:DisableTracing";

    /// <summary>Configuration key (bool, default false) that exports MassTransit's own meter.</summary>
    public const string MassTransitMetricsKey = "Telemetry:MassTransitMetrics";

    public static TBuilder AddServiceDefaults<TBuilder>(this TBuilder builder) where TBuilder : IHostApplicationBuilder
    {
        builder.ConfigureOpenTelemetry();
        builder.AddDefaultHealthChecks();
        builder.Services.AddServiceDiscovery();
        builder.Services.ConfigureHttpClientDefaults(http => http.AddServiceDiscovery());
        return builder;
    }

    public static TBuilder ConfigureOpenTelemetry<TBuilder>(this TBuilder builder) where TBuilder : IHostApplicationBuilder
    {
        // RabbitMQ.Client (traced through Aspire's client, AddRabbitMQClient) starts a publish span for every message on
        // every connection of the process and writes its trace context into each message's headers; the I/O lane's
        // publisher already has one span per published chunk, whose id the consumer takes its parent from
        // (IoLaneEnvelope's MT-Activity-Id), so those spans only repeat it, once per event. Off unless configured;
        // Aspire:RabbitMQ:Client:DisableTracing=false brings them back (docs/observability.md).
        if (builder.Configuration[RabbitMqClientDisableTracingKey] is null)
        {
            builder.Configuration[RabbitMqClientDisableTracingKey] = "true";
        }

        // The last export of traces, metrics and logs at shutdown, bounded as a whole (TelemetryShutdown).
        builder.Services.AddOptions<TelemetryShutdownOptions>()
            .BindConfiguration(TelemetryShutdownOptions.SectionName)
            .Validate(o => o.ShutdownFlushTimeout > TimeSpan.Zero && o.ShutdownFlushTimeout <= TimeSpan.FromMinutes(1),
                "Telemetry:ShutdownFlushTimeout must be more than zero and at most a minute")
            .ValidateOnStart();
        builder.Services.AddHostedService<TelemetryShutdown>();

        builder.Logging.AddOpenTelemetry(logging =>
        {
            logging.IncludeFormattedMessage = true;
            logging.IncludeScopes = true;
        });

        builder.Services.AddSingleton<PipelineMetrics>();
        // MassTransit's meter records about ten measurements per message (receive/consume counters, durations, in-flight
        // gauges) that no dashboard panel or alert reads, and costs Worker.Io CPU per message: opt in with
        // Telemetry:MassTransitMetrics=true (docs/observability.md).
        var massTransitMetrics = builder.Configuration.GetValue(MassTransitMetricsKey, false);
        builder.Services.AddOpenTelemetry()
            .WithMetrics(metrics =>
            {
                metrics
                    .AddAspNetCoreInstrumentation()
                    .AddHttpClientInstrumentation()
                    .AddRuntimeInstrumentation()
                    .AddMeter(PipelineTelemetry.MeterName)
                    .AddPrometheusExporter();
                if (massTransitMetrics)
                {
                    metrics.AddMeter(MassTransitMeterName);
                }
            })
            .WithTracing(tracing => tracing
                .AddSource(builder.Environment.ApplicationName, PipelineTelemetry.ActivitySourceName, "MassTransit")
                .AddAspNetCoreInstrumentation(options =>
                    // Probes and scrapes are noise in a trace view.
                    options.Filter = context => !context.Request.Path.StartsWithSegments("/health")
                                                && !context.Request.Path.StartsWithSegments("/metrics"))
                .AddHttpClientInstrumentation()
                .AddProcessor<MassTransitMessagingTags>());

        if (!string.IsNullOrWhiteSpace(builder.Configuration["OTEL_EXPORTER_OTLP_ENDPOINT"]))
        {
            // The exporter's default timeout (10 s) bounds each export, the ones retried in memory included; 3 s is
            // plenty on the local collector, and a deployment may set OTEL_EXPORTER_OTLP_TIMEOUT itself. The last
            // export at shutdown has a bound of its own, for the three signals together (TelemetryShutdown).
            if (string.IsNullOrWhiteSpace(builder.Configuration["OTEL_EXPORTER_OTLP_TIMEOUT"]))
            {
                builder.Configuration["OTEL_EXPORTER_OTLP_TIMEOUT"] = "3000";
            }

            builder.Services.AddOpenTelemetry().UseOtlpExporter();
        }

        return builder;
    }

    public static TBuilder AddDefaultHealthChecks<TBuilder>(this TBuilder builder) where TBuilder : IHostApplicationBuilder
    {
        builder.Services.AddHealthChecks()
            .AddCheck("self", () => HealthCheckResult.Healthy(), [LiveTag]);
        return builder;
    }

    /// <summary>
    /// Maps <c>/health/live</c> (the process runs), <c>/health/ready</c> (its brokers answer) and <c>/metrics</c>
    /// (Prometheus) in every environment: Kubernetes probes and Prometheus need them in production too.
    /// </summary>
    public static WebApplication MapDefaultEndpoints(this WebApplication app)
    {
        app.MapHealthChecks(HealthEndpointPath);
        app.MapHealthChecks(AlivenessEndpointPath, new HealthCheckOptions { Predicate = r => r.Tags.Contains(LiveTag) });
        app.MapPrometheusScrapingEndpoint();
        return app;
    }
}
