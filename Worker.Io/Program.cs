var builder = WebApplication.CreateBuilder(args);

builder.AddServiceDefaults();
builder.AddIoLane();

var app = builder.Build();

app.MapDefaultEndpoints();

app.Run();
