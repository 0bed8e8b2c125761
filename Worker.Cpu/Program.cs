var builder = WebApplication.CreateBuilder(args);

builder.AddServiceDefaults();
builder.AddCpuLane();

var app = builder.Build();

app.MapDefaultEndpoints();

app.Run();
