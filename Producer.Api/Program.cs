using EventPipeline.Producer.Apis;
using EventPipeline.Producer.Ingest;

var builder = WebApplication.CreateBuilder(args);

builder.AddServiceDefaults();
builder.AddApplicationServices();
builder.AddInFlightIngestBudget();

var app = builder.Build();

app.UseExceptionHandler();
app.UseStatusCodePages();
// Routing runs first (WebApplication adds it at the start), so the limit knows which endpoint a request is for.
app.UseInFlightIngestLimit();
app.MapDefaultEndpoints();
app.MapApiDocument();
app.MapEventsApi();
app.MapLanesApi();
app.MapDeadLettersApi();
app.MapSchedulesApi();

app.Run();

public partial class Program;
