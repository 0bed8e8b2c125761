var builder = WebApplication.CreateBuilder(args);

builder.AddServiceDefaults();
builder.Services.AddOptions<EventPipeline.Downstream.ReceiverOptions>().BindConfiguration("Receiver");
builder.Services.AddSingleton<EventPipeline.Downstream.DeliveryLedger>();

var app = builder.Build();

app.MapDefaultEndpoints();
app.MapReceiverApi();

app.Run();
