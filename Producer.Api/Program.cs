using EventPipeline.Producer.Apis;
using EventPipeline.Producer.Ingest;

var builder = WebApplication.CreateBuilder(args);

builder.AddServiceDefaults();
builder.AddApplicationServices();
// The in-flight byte budget is charged by the submission endpoints themselves as body bytes arrive (EventIngest,
// PooledRequestBody), not by a middleware reserving what a request announces: that ran before the API key was
// checked and let slow clients hold reservations for bytes they had not sent.
builder.AddInFlightIngestBudget();

var app = builder.Build();

app.UseExceptionHandler();
app.UseStatusCodePages();
app.MapDefaultEndpoints();
app.MapApiDocument();
app.MapEventsApi();
app.MapLanesApi();
app.MapDeadLettersApi();
app.MapSchedulesApi();

app.Run();

public partial class Program;
