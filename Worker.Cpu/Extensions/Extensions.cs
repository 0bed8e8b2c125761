using EventPipeline.Shared;
using EventPipeline.Worker.Cpu.Lane;
using EventPipeline.Worker.Cpu.Work;

namespace Microsoft.Extensions.Hosting;

public static class CpuLaneExtensions
{
    public static IHostApplicationBuilder AddCpuLane(this IHostApplicationBuilder builder)
    {
        builder.AddRedisClient("redis", configureOptions: options => options.AbortOnConnectFail = false);

        builder.Services.AddOptions<CpuLaneOptions>().BindConfiguration("CpuLane")
            .ValidateDataAnnotations()
            .Validate(o => o.ClaimTimeout >= TimeSpan.FromSeconds(1) && o.ClaimInterval > TimeSpan.Zero, "CpuLane:ClaimTimeout must be at least 1 s and ClaimInterval positive")
            .Validate(o => o.BlockTimeout > TimeSpan.Zero && o.BlockTimeout < o.ClaimTimeout / 3, "CpuLane:BlockTimeout must be positive and under a third of ClaimTimeout")
            .Validate(o => o.RetryBaseDelay > TimeSpan.Zero && o.RetryMaxDelay >= o.RetryBaseDelay, "CpuLane:RetryBaseDelay must be positive and at most RetryMaxDelay")
            .ValidateOnStart();
        builder.Services.AddOptions<TestEventsOptions>().BindConfiguration("TestEvents");
        builder.Services.AddOptions<StatusOptions>().BindConfiguration("Status");

        // The host waits for the drain, plus a margin for the last acknowledgements and telemetry flush.
        var drain = builder.Configuration.GetValue("CpuLane:DrainTimeout", TimeSpan.FromSeconds(25));
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = drain + TimeSpan.FromSeconds(5));

        builder.Services.AddSingleton<EventStatusStore>();
        builder.Services.AddSingleton<CpuWork>();
        builder.Services.AddSingleton<LaneBuffer>();
        builder.Services.AddSingleton<StreamEntryReader>();
        builder.Services.AddSingleton<EntryAcknowledger>();
        builder.Services.AddSingleton<RetryScheduler>();
        builder.Services.AddSingleton<DeadLetterStream>();
        builder.Services.AddHostedService<CpuLaneConsumer>();
        builder.Services.AddHostedService<StaleEntryClaimer>();
        return builder;
    }
}
