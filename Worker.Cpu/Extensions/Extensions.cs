using EventPipeline.Contracts;
using EventPipeline.Shared;
using EventPipeline.Worker.Cpu.Forward;
using EventPipeline.Worker.Cpu.Lane;
using EventPipeline.Worker.Cpu.Work;
using MassTransit;
using StackExchange.Redis;

namespace Microsoft.Extensions.Hosting;

public static class CpuLaneExtensions
{
    /// <summary>StackExchange.Redis socket threads of the worker's connections (<c>Performance:RedisSocketThreads</c>).</summary>
    public const int DefaultRedisSocketThreads = 2;

    // One socket manager per thread count for the process's life, as StackExchange.Redis's own SocketManager.Shared
    // (hosts built in one test process share it; a multiplexer's Dispose does not dispose the manager it was given).
    // Made under a lock: a second one made by a race would start threads nothing ever stops.
    private static readonly Dictionary<int, SocketManager> RedisSocketManagers = [];
    private static readonly Lock RedisSocketManagersLock = new();

    internal static SocketManager RedisSocketManager(int threads)
    {
        lock (RedisSocketManagersLock)
        {
            if (!RedisSocketManagers.TryGetValue(threads, out var manager))
            {
                manager = new SocketManager("worker-cpu", threads, SocketManager.SocketManagerOptions.UseHighPrioritySocketThreads);
                RedisSocketManagers[threads] = manager;
            }

            return manager;
        }
    }

    public static IHostApplicationBuilder AddCpuLane(this IHostApplicationBuilder builder)
    {
        var socketThreads = builder.Configuration.GetValue("Performance:RedisSocketThreads", DefaultRedisSocketThreads);
        if (socketThreads is < 0 or > 64)
        {
            throw new InvalidOperationException($"Performance:RedisSocketThreads must be between 0 (the thread pool) and 64, not {socketThreads}");
        }

        builder.AddRedisClient("redis", configureOptions: options =>
        {
            options.AbortOnConnectFail = false;
            // Replies are read on this process's own StackExchange.Redis socket threads, 2 by default, instead of the
            // library's shared 10 (the blocking reader's connection clones these options, so it too): the idle worker's
            // socket-thread wake-ups fell from ~8 to ~3 a second of its ~35 (docs/operations.md, "Idle CPU"). 0 reads
            // them on the .NET thread pool, as Producer.Api does: idle alone 0.43 % against 0.46 %, but the thread pool
            // is where PBKDF2 runs, and the CPU lane's worst suite run came with it (403/s, worker-cpu 4,048 µs per
            // event); the dedicated threads are what every earlier suite measured.
            options.SocketManager = socketThreads == 0 ? SocketManager.ThreadPool : RedisSocketManager(socketThreads);
        });
        // Under Sentinel, connected in the background: Aspire's synchronous first connect threw at host start when no
        // Sentinel answered, and the worker exited (SentinelConnectionAtStart).
        builder.AddSentinelConnectionAtStart();

        builder.Services.AddOptions<CpuLaneOptions>().BindConfiguration("CpuLane")
            .ValidateDataAnnotations()
            .Validate(o => o.ClaimTimeout >= TimeSpan.FromSeconds(1) && o.ClaimInterval > TimeSpan.Zero, "CpuLane:ClaimTimeout must be at least 1 s and ClaimInterval positive")
            .Validate(o => o.BlockTimeout > TimeSpan.Zero && o.BlockTimeout < o.ClaimTimeout / 3, "CpuLane:BlockTimeout must be positive and under a third of ClaimTimeout")
            // Far inside the reader's wake-up stream lifetime (StreamEntryReader.WakeStreamLifetime, 10 min, renewed every 2.5 min).
            .Validate(o => o.BlockTimeout <= TimeSpan.FromMinutes(1), "CpuLane:BlockTimeout must be at most 1 minute")
            .Validate(o => o.RetryBaseDelay > TimeSpan.Zero && o.RetryMaxDelay >= o.RetryBaseDelay, "CpuLane:RetryBaseDelay must be positive and at most RetryMaxDelay")
            .Validate(o => o.WriteLinger >= TimeSpan.Zero && o.WriteLinger <= TimeSpan.FromSeconds(1), "CpuLane:WriteLinger must be between 0 and 1 s")
            .Validate(o => o.DrainTimeout > TimeSpan.Zero && o.ForwardTimeout > TimeSpan.Zero, "CpuLane:DrainTimeout and CpuLane:ForwardTimeout must be positive")
            .ValidateOnStart();
        builder.Services.AddOptions<TestEventsOptions>().BindConfiguration("TestEvents");
        builder.Services.AddOptions<StatusOptions>().BindConfiguration("Status");

        // The host waits for the drain, plus ComputeSlots.ShutdownMargin: a drain timeout's take-back waits for the lane
        // write in flight as long as the Redis client does, then writes (a literal here: tests/Infra.Tests reads it).
        // The drain's clock starts when the read loop returns, after its last blocking read: that read cannot be
        // cancelled (the stop ends it through the reader's wake-up stream, a write), and while Redis stalls it ends only
        // at the reader connection's timeout (BlockTimeout +
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
