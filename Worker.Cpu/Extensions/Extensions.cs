using EventPipeline.Contracts;
using EventPipeline.Shared;
using EventPipeline.Worker.Cpu.Forward;
using EventPipeline.Worker.Cpu.Lane;
using EventPipeline.Worker.Cpu.Work;
using MassTransit;

namespace Microsoft.Extensions.Hosting;

public static class CpuLaneExtensions
{
    public static IHostApplicationBuilder AddCpuLane(this IHostApplicationBuilder builder)
    {
        builder.AddRedisClient("redis", configureOptions: options =>
        {
            options.AbortOnConnectFail = false;
            // Replies are completed on the thread pool instead of StackExchange.Redis's own pool of 10 dedicated reader
            // threads (the blocking reader's connection clones these options, so it too). Those threads each woke about
            // once a second with nothing to do: ~8 of the idle worker's ~35 wake-ups a second (docs/operations.md,
            // "Idle CPU"). Producer.Api does the same (Performance:RedisOnThreadPool).
            if (builder.Configuration.GetValue("Performance:RedisOnThreadPool", true))
            {
                options.SocketManager = StackExchange.Redis.SocketManager.ThreadPool;
            }
        });
        // Under Sentinel, connected in the background: Aspire's synchronous first connect threw at host start when no
        // Sentinel answered, and the worker exited (SentinelConnectionAtStart).
        builder.AddSentinelConnectionAtStart();

        builder.Services.AddOptions<CpuLaneOptions>().BindConfiguration("CpuLane")
            .ValidateDataAnnotations()
            .Validate(o => o.ClaimTimeout >= TimeSpan.FromSeconds(1) && o.ClaimInterval > TimeSpan.Zero, "CpuLane:ClaimTimeout must be at least 1 s and ClaimInterval positive")
            .Validate(o => o.BlockTimeout > TimeSpan.Zero && o.BlockTimeout < o.ClaimTimeout / 3, "CpuLane:BlockTimeout must be positive and under a third of ClaimTimeout")
            .Validate(o => o.RetryBaseDelay > TimeSpan.Zero && o.RetryMaxDelay >= o.RetryBaseDelay, "CpuLane:RetryBaseDelay must be positive and at most RetryMaxDelay")
            .Validate(o => o.WriteLinger >= TimeSpan.Zero && o.WriteLinger <= TimeSpan.FromSeconds(1), "CpuLane:WriteLinger must be between 0 and 1 s")
            .Validate(o => o.DrainTimeout > TimeSpan.Zero && o.ForwardTimeout > TimeSpan.Zero, "CpuLane:DrainTimeout and CpuLane:ForwardTimeout must be positive")
            .ValidateOnStart();
        builder.Services.AddOptions<TestEventsOptions>().BindConfiguration("TestEvents");
        builder.Services.AddOptions<StatusOptions>().BindConfiguration("Status");

        // The host waits for the drain, plus ComputeSlots.ShutdownMargin: a drain timeout's take-back waits for the lane
        // write in flight as long as the Redis client does, then writes (a literal here: tests/Infra.Tests reads it).
        // The drain's clock starts when the read loop returns, after its last blocking read: that read cannot be
        // cancelled, and while Redis stalls it ends only at the reader connection's timeout (BlockTimeout +
        // TimeoutBeyondBlock) and a heartbeat of its connection. It is part of the wait too, or the host gave up before the take-back.
        var drain = builder.Configuration.GetValue("CpuLane:DrainTimeout", TimeSpan.FromSeconds(25))
                    + builder.Configuration.GetValue("CpuLane:BlockTimeout", new CpuLaneOptions().BlockTimeout)
                    + StreamEntryReader.TimeoutBeyondBlock + StreamEntryReader.Heartbeat;
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = drain + TimeSpan.FromSeconds(10));

        // Registered before the lane's hosted services so the bus stops after the drain (hosted services stop in reverse).
        builder.AddNextStageForwarding();

        builder.Services.AddSingleton<EventStatusStore>();
        builder.Services.AddSingleton<CpuWork>();
        builder.Services.AddSingleton<StartedBound>();
        builder.Services.AddSingleton<LaneBuffer>();
        builder.Services.AddSingleton<SuspectIsolationGate>();
        builder.Services.AddSingleton<StreamEntryReader>();
        builder.Services.AddSingleton<EntryAcknowledger>();
        builder.Services.AddSingleton<EntryOwnership>();
        builder.Services.AddSingleton<ComputeSlots>();
        builder.Services.AddSingleton<LaneWriter>();
        builder.Services.AddSingleton<RetryScheduler>();
        builder.Services.AddSingleton<DeadLetterStream>();
        builder.Services.AddHostedService<CpuLaneConsumer>();
        builder.Services.AddHostedService<StaleEntryClaimer>();
        builder.Services.AddHostedService<DueRetryPromoter>();
        return builder;
    }

    /// <summary>
    /// The optional next stage (<c>payload.then</c>): publish to the I/O lane with publisher confirms, binding the
    /// lane's queue at publish time, so a forwarded event is kept even before Worker.Io ever ran.
    /// Without <c>ConnectionStrings:rabbitmq</c> the worker runs and dead-letters events that ask for a next stage.
    /// </summary>
    private static void AddNextStageForwarding(this IHostApplicationBuilder builder)
    {
        var connectionString = builder.Configuration.GetConnectionString("rabbitmq");
        if (string.IsNullOrWhiteSpace(connectionString))
        {
            builder.Services.AddSingleton<INextStageForwarder, NoIoLaneForwarder>();
            return;
        }

        builder.Services.AddSingleton<INextStageForwarder, IoLaneForwarder>();
        builder.Services.AddIoLanePublisher(connectionString);
    }
}
