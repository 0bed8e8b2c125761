using EventPipeline.Producer.Apis;

var builder = WebApplication.CreateBuilder(args);

builder.AddServiceDefaults();
builder.AddApplicationServices();

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
