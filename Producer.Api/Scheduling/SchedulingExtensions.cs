using EventPipeline.Producer.Ingest;
using EventPipeline.Producer.Scheduling;
using EventPipeline.Shared;

namespace Microsoft.Extensions.Hosting;

public static class SchedulingExtensions
{
    /// <summary>Delayed and expiring events, cancellation's store and periodic schedules (<c>Scheduling</c> section).</summary>
    public static IHostApplicationBuilder AddScheduling(this IHostApplicationBuilder builder)
    {
        builder.Services.AddOptions<SchedulingOptions>().BindConfiguration("Scheduling")
            .Validate(o => o.MaxDelay > TimeSpan.Zero && o.PastTolerance >= TimeSpan.Zero && o.PollInterval > TimeSpan.Zero
                           && o.IoClaimLease > TimeSpan.FromSeconds(1) && o.PromoteBatch > 0 && o.MisfireThreshold > TimeSpan.Zero,
                "Scheduling intervals must be positive, IoClaimLease over a second and PromoteBatch at least 1")
            .ValidateOnStart();
        builder.Services.AddSingleton<DelayedEventStore>();
        builder.Services.AddSingleton<DelayedEventHolder>();
        builder.Services.AddSingleton<ScheduleStore>();
        if (builder.Configuration.GetValue("Scheduling:Enabled", true))
        {
            builder.Services.AddHostedService<DelayedEventPromoter>();
            builder.Services.AddHostedService<ScheduleRunner>();
        }

        return builder;
    }
}
