using OpenTelemetry.Metrics;

var builder = WebApplication.CreateBuilder(args);

builder.AddServiceDefaults();
// The receiver stands in for a downstream service on the same cores as the lane it is sent to, so whatever it does per
// request is charged to every I/O benchmark (docs/benchmarks-history.md, "Session 9: I/O lane"). Per request it keeps only what a
// test or a trace reads: its server span (the end of every webhook's trace) and the ledger. No ASP.NET Core
// instruments (request duration, active requests, route matches, Kestrel connections): no panel or alert reads the
// receiver's, and their tags and aggregation ran for every webhook. The runtime and pipeline meters stay.
builder.Services.AddOpenTelemetry().WithMetrics(metrics => metrics.AddView(instrument =>
    instrument.Meter.Name.StartsWith("Microsoft.AspNetCore", StringComparison.Ordinal) ? MetricStreamConfiguration.Drop : null));
builder.WebHost.ConfigureKestrel(kestrel => kestrel.AddServerHeader = false);
builder.Services.AddOptions<EventPipeline.Downstream.ReceiverOptions>().BindConfiguration("Receiver");
builder.Services.AddSingleton<EventPipeline.Downstream.DeliveryLedger>();

var app = builder.Build();

app.MapDefaultEndpoints();
app.MapReceiverApi();

app.Run();
