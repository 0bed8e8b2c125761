using System.Collections.Concurrent;
using System.Collections.Immutable;
using System.Globalization;
using Aspire.Hosting.ApplicationModel;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Aspire.Hosting;

/// <summary>Marks a resource the AppHost starts again when its process crashes.</summary>
public sealed class RestartOnCrashAnnotation : IResourceAnnotation;

/// <summary>
/// Crashed workers come back on their own, as a Kubernetes pod's containers do: with a back-off that doubles from
/// <see cref="FirstDelay"/> to <see cref="MaxDelay"/> and resets once the process has run for <see cref="StableAfter"/>.
/// A crash is an exit the AppHost did not ask for: a non-zero exit code with no <c>Stopping</c> state before it. A
/// Stop from the dashboard (state <c>Stopping</c>, or exit code 0) is left alone. The start goes through Aspire's own
/// <see cref="KnownResourceCommands.StartCommand"/>, and only if the resource is still down when the back-off ends,
/// so that someone else having started it meanwhile (the dashboard, the CLI, a test) is harmless: Aspire's
/// start on a running resource would restart it, so it is never sent to one. The state alone does not say so in time: a
/// loaded machine's orchestrator left a resource <c>Finished</c> for 1.85 s after someone else's Start began, so every
/// Start not sent by the restarter is counted (<see cref="StartRequests"/>): after one since the crashed run began, the restarter
/// waits up to <see cref="OthersStartGrace"/> for it to bring the resource up and starts it itself only if it did not.
/// The restarter's own Start can fail too (it throws, reports failure, or leaves the resource <c>FailedToStart</c>): it is
/// tried again with the same back-off, each failure logged, until the resource runs, someone else starts it, an operator
/// stops it, or the AppHost stops; a resource that never starts is retried every <see cref="MaxDelay"/>, as Kubernetes
/// keeps retrying a container in its crash-loop back-off.
/// A Stop is known by the command sent, not only by the state (review of s12-restarter3, M1): Aspire's Stop on a resource
/// that is down fails or does nothing, with no <c>Stopping</c> state, and the dashboard hides it there, so every Stop
/// is counted (<see cref="StartRequests"/>), and while a restart is pending (the resource property
/// <see cref="RestartPendingProperty"/>) the dashboard offers <see cref="StopRestartingCommand"/> in its place. Either
/// ends the pending restart at once; the resource is then left down until someone starts it.
/// <c>Workers:RestartOnCrash=false</c> turns this off. The dashboard shows the count as the resource property
/// <c>restarts</c> and a line in the console log.
/// </summary>
public static class CrashRestarts
{
    public static readonly TimeSpan FirstDelay = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxDelay = TimeSpan.FromSeconds(30);
    public static readonly TimeSpan StableAfter = TimeSpan.FromSeconds(60);

    /// <summary>
    /// How long someone else's Start, sent after a crash, has to bring the resource up before the restarter starts it
    /// itself (<see cref="OthersStartGraceSetting"/> changes it). A Start is counted when it is sent, not when it works, and
    /// one that fails or is cancelled leaves the resource down: the grace bounds that outage.
    /// </summary>
    public static readonly TimeSpan OthersStartGrace = TimeSpan.FromSeconds(60);

    /// <summary>The AppHost setting for <see cref="OthersStartGrace"/>, a <see cref="TimeSpan"/> (<c>00:01:00</c>).</summary>
    public const string OthersStartGraceSetting = "Workers:OthersStartGrace";

    public const string RestartsProperty = "restarts";

    /// <summary>A resource property, <c>true</c> while the restarter is waiting to start the resource (or starting it).</summary>
    public const string RestartPendingProperty = "restart-pending";

    /// <summary>
    /// The resource command "Stop restarting": counted as a Stop, so the restarter leaves the resource down until someone
    /// starts it. Shown while a restart is pending and the resource is down, where Aspire hides its own Stop.
    /// </summary>
    public const string StopRestartingCommand = "stop-restarting";

    /// <summary>The back-off before the restart that follows the <paramref name="crashes"/>th crash or failed start in a row.</summary>
    internal static TimeSpan DelayAfter(int crashes) =>
        TimeSpan.FromTicks(Math.Min(MaxDelay.Ticks, FirstDelay.Ticks << Math.Clamp(crashes - 1, 0, 16)));

    /// <summary>The shortest and longest <see cref="OthersStartGraceSetting"/> the AppHost takes.</summary>
    public static readonly TimeSpan MinOthersStartGrace = TimeSpan.FromSeconds(1);

    public static readonly TimeSpan MaxOthersStartGrace = TimeSpan.FromMinutes(10);

    /// <summary>
    /// The grace the setting asks for, checked when the model is built (review of s11-restarter2, M1): a bare number
    /// binds as days (<c>15</c> is 15 days of a crashed worker left down after one cancelled Start), and zero would bring
    /// back the double start the grace exists to prevent, so only <c>hh:mm:ss</c> within 1 s to 10 min is taken.
    /// </summary>
    internal static TimeSpan OthersStartGraceFrom(IConfiguration configuration)
    {
        var text = configuration[OthersStartGraceSetting];
        if (text is null)
        {
            return OthersStartGrace;
        }

        if (!text.Contains(':', StringComparison.Ordinal)
            || !TimeSpan.TryParse(text, CultureInfo.InvariantCulture, out var grace)
            || grace < MinOthersStartGrace || grace > MaxOthersStartGrace)
        {
            throw new DistributedApplicationException(
                $"{OthersStartGraceSetting} must be a time span written hh:mm:ss between {MinOthersStartGrace} and {MaxOthersStartGrace} (it is '{text}').");
        }

        return grace;
    }

    public static IResourceBuilder<T> WithRestartOnCrash<T>(this IResourceBuilder<T> builder) where T : IResource
    {
        if (!builder.ApplicationBuilder.Configuration.GetValue("Workers:RestartOnCrash", true)
            || builder.ApplicationBuilder.ExecutionContext.IsPublishMode)
        {
            return builder;
        }

        if (!builder.ApplicationBuilder.Services.Any(s => s.ImplementationType == typeof(CrashRestarter)))
        {
            OthersStartGraceFrom(builder.ApplicationBuilder.Configuration);
            builder.ApplicationBuilder.Services.AddSingleton<StartRequests>();
            builder.ApplicationBuilder.Services.AddHostedService<CrashRestarter>();
        }

        // Where the lifecycle commands already exist at BeforeStartEvent (newer Aspire), they are wrapped here; Aspire
        // 13.6.5 adds them later, when DCP creates the resource (review of s10-restarter, M1), and the restarter wraps
        // them on the first state update it sees, before any crash it could restart from.
        var resource = builder.Resource;
        builder.ApplicationBuilder.Eventing.Subscribe<BeforeStartEvent>((e, _) =>
        {
            if (!e.Services.GetRequiredService<StartRequests>().Watch(resource))
            {
                e.Services.GetRequiredService<ILoggerFactory>().CreateLogger<CrashRestarter>().LogDebug(
                    "{Resource} has no Start command yet at BeforeStartEvent: it is wrapped on the resource's first state update",
                    resource.Name);
            }

            return Task.CompletedTask;
        });

        builder.WithCommand(StopRestartingCommand, "Stop restarting",
            context =>
            {
                context.Services.GetRequiredService<StartRequests>().RecordStop(context.ResourceName);
                return Task.FromResult(CommandResults.Success($"{context.ResourceName} is not started again by the AppHost until someone starts it."));
            },
            new CommandOptions
            {
                Description = "Leave the worker down: the AppHost stops trying to start it again until someone starts it.",
                IconName = "Stop",
                IsHighlighted = true,
                UpdateState = context => IsDownWithRestartPending(context.ResourceSnapshot) ? ResourceCommandState.Enabled : ResourceCommandState.Hidden,
            });
        return builder.WithAnnotation(new RestartOnCrashAnnotation());
    }

    private static bool IsDownWithRestartPending(CustomResourceSnapshot snapshot) =>
        snapshot.State?.Text is { } state
        && (state == KnownResourceStates.Exited || state == KnownResourceStates.Finished || state == KnownResourceStates.FailedToStart)
        && snapshot.Properties.Any(p => p.Name == RestartPendingProperty && p.Value is true);
}

/// <summary>Watches resource states and starts a crashed resource again after its back-off (see <see cref="CrashRestarts"/>).</summary>
internal sealed class CrashRestarter(
    ResourceNotificationService notifications,
    ResourceLoggerService resourceLogs,
    StartRequests startRequests,
    IServiceProvider services,
    IConfiguration configuration,
    ILogger<CrashRestarter> logger) : BackgroundService
{
    private static readonly HashSet<string> Down = new(StringComparer.Ordinal)
    {
        KnownResourceStates.Exited, KnownResourceStates.Finished, KnownResourceStates.FailedToStart,
    };

    private readonly ConcurrentDictionary<string, Tracker> _trackers = new(StringComparer.Ordinal);
    private readonly TimeSpan _othersStartGrace = CrashRestarts.OthersStartGraceFrom(configuration);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        startRequests.StopRequested += WakeOnStop;
        try
        {
            await foreach (var update in notifications.WatchAsync(stoppingToken))
            {
                if (update.Resource.HasAnnotationOfType<RestartOnCrashAnnotation>())
                {
                    Observe(update, stoppingToken);
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // The AppHost is shutting down: nothing is restarted any more.
        }
        finally
        {
            startRequests.StopRequested -= WakeOnStop;
        }
    }

    /// <summary>A Stop was sent: a pending restart wakes from its back-off or grace and finds it (it is counted first).</summary>
    private void WakeOnStop(string resourceId)
    {
        if (_trackers.TryGetValue(resourceId, out var tracker))
        {
            lock (tracker)
            {
                tracker.Loop?.Wake.TrySetResult();
            }
        }
    }

    /// <summary>Whether the resource was stopped on purpose since its last run began: a <c>Stopping</c> state or a Stop sent.</summary>
    private bool StopAsked(string resourceId, Tracker tracker)
    {
        lock (tracker)
        {
            if (!tracker.StoppedOnPurpose && startRequests.StopCount(resourceId) != tracker.StopsBeforeRun)
            {
                tracker.StoppedOnPurpose = true;
            }

            return tracker.StoppedOnPurpose;
        }
    }

    private void Observe(ResourceEvent update, CancellationToken stoppingToken)
    {
        // Normally done at BeforeStartEvent; this covers an Aspire version that adds its lifecycle commands later.
        startRequests.Watch(update.Resource);
        var tracker = _trackers.GetOrAdd(update.ResourceId, _ => new Tracker());
        var state = update.Snapshot.State?.Text;
        lock (tracker)
        {
            if (state == tracker.LastState)
            {
                return;
            }

            tracker.LastState = state;
            if (state == KnownResourceStates.Running)
            {
                tracker.StoppedOnPurpose = false;
                tracker.RunningSince = DateTimeOffset.UtcNow;
                // Starts sent before this run are its own; one counted after it is someone else's answer to its end.
                // Known limit (review of s10-restarter, L3): the count is read when this loop handles Running, not when
                // the run began, so a Start sent to the running resource in between (Aspire restarts a running resource
                // on Start) is taken as the run's own; if the run it replaces then shows Exited and DCP still shows it
                // down when the back-off ends, the restarter starts it once more. That needs a Start on a *running*
                // worker within the watch loop's lag, then a DCP slower than the back-off; left as it is. So is the
                // moment between the check after the back-off and the restarter's own Start: closing it would mean
                // refusing an operator's Start.
                tracker.StartsBeforeRun = startRequests.Count(update.ResourceId);
                tracker.StopsBeforeRun = startRequests.StopCount(update.ResourceId);
                return;
            }

            if (state == KnownResourceStates.Stopping)
            {
                tracker.StoppedOnPurpose = true;
                return;
            }

            if (state is null || !Down.Contains(state) || tracker.Loop is not null)
            {
                return;
            }

            var log = resourceLogs.GetLogger(update.ResourceId);
            if (StopAsked(update.ResourceId, tracker) || (update.Snapshot.ExitCode == 0 && state != KnownResourceStates.FailedToStart))
            {
                log.LogInformation("{Resource} stopped on purpose (exit code {ExitCode}): not restarting it", update.Resource.Name, update.Snapshot.ExitCode);
                return;
            }

            // A run that lasted resets the back-off, as Kubernetes resets a container's crash-loop back-off.
            if (tracker.RunningSince is { } since && DateTimeOffset.UtcNow - since >= CrashRestarts.StableAfter)
            {
                tracker.Crashes = 0;
            }

            tracker.Crashes++;
            tracker.Restarts++;
            tracker.RunningSince = null;
            var loop = new RestartLoop();
            tracker.Loop = loop;
            var delay = CrashRestarts.DelayAfter(tracker.Crashes);
            log.LogWarning("{Resource} {State} with exit code {ExitCode}: restart {Restarts}, starting it again in {Delay}",
                update.Resource.Name, state, update.Snapshot.ExitCode, tracker.Restarts, delay);
            _ = RestartAsync(update, tracker, loop, delay, stoppingToken);
        }
    }

    /// <summary>Whether the resource shows <c>Running</c> within <paramref name="grace"/>; false at once when a Stop woke the loop.</summary>
    private async Task<bool> RunsWithinAsync(string resourceId, TimeSpan grace, RestartLoop loop, CancellationToken stoppingToken)
    {
        var deadline = DateTimeOffset.UtcNow + grace;
        while (true)
        {
            if (notifications.TryGetCurrentState(resourceId, out var current) && current.Snapshot.State?.Text == KnownResourceStates.Running)
            {
                return true;
            }

            if (DateTimeOffset.UtcNow >= deadline || loop.Wake.Task.IsCompleted)
            {
                return false;
            }

            await Task.WhenAny(Task.Delay(TimeSpan.FromMilliseconds(250), stoppingToken), loop.Wake.Task);
            stoppingToken.ThrowIfCancellationRequested();
        }
    }

    /// <summary>Waits <paramref name="delay"/>, or less if a Stop wakes the loop.</summary>
    private static async Task BackOffAsync(TimeSpan delay, RestartLoop loop, CancellationToken stoppingToken)
    {
        using var timer = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
        await Task.WhenAny(Task.Delay(delay, timer.Token), loop.Wake.Task);
        await timer.CancelAsync();
        stoppingToken.ThrowIfCancellationRequested();
    }

    /// <summary>Shows on the dashboard whether a restart is pending (<see cref="CrashRestarts.RestartPendingProperty"/>).</summary>
    private Task PublishPendingAsync(ResourceEvent crashed, Tracker tracker) =>
        // Read when the update is applied, not when it is asked for: the last of two racing updates shows the truth. Not
        // under the tracker's lock, which is taken elsewhere around reads of the notification service.
        notifications.PublishUpdateAsync(crashed.Resource, crashed.ResourceId, snapshot => snapshot with
        {
            Properties = SetProperty(snapshot.Properties, CrashRestarts.RestartPendingProperty, Volatile.Read(ref tracker.Loop) is not null),
        });

    /// <summary>
    /// Starts the crashed resource after <paramref name="delay"/>, and again after a longer one for as long as its Start
    /// fails (review of s11-restarter2, M2): a Start that throws or reports failure, or after which Aspire shows the
    /// resource <c>FailedToStart</c>, is tried again with the crash back-off (doubling, at most
    /// <see cref="CrashRestarts.MaxDelay"/>), each failure logged, until the resource runs, someone else starts it, an
    /// operator stops it, or the AppHost stops. Aspire publishes <c>FailedToStart</c> while the Start is still executing,
    /// when the restart is pending and <see cref="Observe"/> leaves it alone, so the outcome is checked here. A Stop
    /// (counted, see <see cref="StopAsked"/>) wakes the loop from its back-off or grace, and it ends without a Start.
    /// </summary>
    private async Task RestartAsync(ResourceEvent crashed, Tracker tracker, RestartLoop loop, TimeSpan delay, CancellationToken stoppingToken)
    {
        var log = resourceLogs.GetLogger(crashed.ResourceId);
        try
        {
            try
            {
                await PublishPendingAsync(crashed, tracker);
            }
            catch (Exception ex) when (!stoppingToken.IsCancellationRequested)
            {
                // Only the dashboard's "Stop restarting" waits for it; the restart goes on.
                logger.LogWarning(ex, "The restart-pending property of {Resource} was not published", crashed.Resource.Name);
            }

            for (var attempt = 1; ; attempt++)
            {
                await BackOffAsync(delay, loop, stoppingToken);
                string? failure;
                try
                {
                    failure = await StartUnlessStartedAsync(crashed, tracker, loop, log, stoppingToken);
                }
                catch (Exception ex) when (!stoppingToken.IsCancellationRequested)
                {
                    logger.LogError(ex, "Starting {Resource} again threw", crashed.Resource.Name);
                    failure = ex.Message;
                }

                if (failure is null)
                {
                    return;
                }

                int restarts;
                lock (tracker)
                {
                    tracker.Crashes++;
                    tracker.Restarts++;
                    restarts = tracker.Restarts;
                    delay = CrashRestarts.DelayAfter(tracker.Crashes);
                }

                // In the resource's console log (the dashboard) and the AppHost's: a worker left down must not be silent.
                log.LogWarning("Starting {Resource} again failed on attempt {Attempt} ({Failure}): restart {Restarts}, trying again in {Delay}",
                    crashed.Resource.Name, attempt, failure, restarts, delay);
                logger.LogWarning("Starting {Resource} again failed on attempt {Attempt} ({Failure}): restart {Restarts}, trying again in {Delay}",
                    crashed.Resource.Name, attempt, failure, restarts, delay);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // Shutting down.
        }
        catch (Exception ex) when (stoppingToken.IsCancellationRequested)
        {
            // Shutting down: the services it used may be disposed already (review of s12-restarter3, L4). Logged, not
            // left as an unobserved exception of this fire-and-forget task.
            logger.LogDebug(ex, "Restarting {Resource} ended with the AppHost", crashed.Resource.Name);
        }
        finally
        {
            lock (tracker)
            {
                // Only this loop's own: a successful Start cleared it, and the state watch may since have begun the
                // next loop, whose flag this must not clear (review of s12-restarter3, L1).
                if (tracker.Loop == loop)
                {
                    tracker.Loop = null;
                }
            }
        }

        if (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await PublishPendingAsync(crashed, tracker);
            }
            catch (Exception ex)
            {
                // The AppHost stopping meanwhile disposes the notification service; else it is worth a look.
                logger.Log(stoppingToken.IsCancellationRequested ? LogLevel.Debug : LogLevel.Warning, ex,
                    "The restart-pending property of {Resource} was not cleared", crashed.Resource.Name);
            }
        }
    }

    /// <summary>
    /// One restart attempt: null when it is over (the resource was started, or is someone else's to start, or was stopped
    /// on purpose), else why the Start failed.
    /// </summary>
    private async Task<string?> StartUnlessStartedAsync(ResourceEvent crashed, Tracker tracker, RestartLoop loop, ILogger log, CancellationToken stoppingToken)
    {
        if (StopAsked(crashed.ResourceId, tracker))
        {
            log.LogInformation("{Resource} was stopped on purpose meanwhile: not starting it", crashed.Resource.Name);
            return null;
        }

        long startsSeen;
        lock (tracker)
        {
            startsSeen = tracker.StartsBeforeRun;
        }

        if (startRequests.Count(crashed.ResourceId) != startsSeen)
        {
            // Someone else's Start is under way (the resource can still show Finished for seconds on a loaded
            // machine): a second start would restart what it started. But a Start is counted when it is sent, not
            // when it works: one that fails or is cancelled must not leave the crashed resource down (review of
            // s10-restarter, H1), so the restarter waits for it to bring the resource up, and starts it only if it
            // did not.
            log.LogInformation("{Resource} was started by someone else meanwhile: not starting it again unless that start fails to bring it up within {Grace}",
                crashed.Resource.Name, _othersStartGrace);
            if (await RunsWithinAsync(crashed.ResourceId, _othersStartGrace, loop, stoppingToken))
            {
                return null;
            }

            if (StopAsked(crashed.ResourceId, tracker))
            {
                log.LogInformation("{Resource} was stopped on purpose meanwhile: not starting it", crashed.Resource.Name);
                return null;
            }

            lock (tracker)
            {
                // Those Starts have had their grace: only later ones get another (a retry after a failed attempt).
                tracker.StartsBeforeRun = startRequests.Count(crashed.ResourceId);
            }

            log.LogWarning("{Resource} did not come up within {Grace} of someone else's start: starting it", crashed.Resource.Name, _othersStartGrace);
        }

        int restarts;
        lock (tracker)
        {
            // A Stop sent meanwhile (the CLI, the API, the dashboard on a resource someone else started) is the
            // operator's last word (review of s11-restarter2, L7), before the first attempt as before any retry.
            if (StopAsked(crashed.ResourceId, tracker))
            {
                log.LogInformation("{Resource} was stopped on purpose meanwhile: not starting it", crashed.Resource.Name);
                return null;
            }

            restarts = tracker.Restarts;
        }

        if (notifications.TryGetCurrentState(crashed.ResourceId, out var current) && current.Snapshot.State?.Text is { } now && !Down.Contains(now))
        {
            // Started by someone else meanwhile (the dashboard, the CLI, a test): a second start would restart it.
            log.LogInformation("{Resource} is {State} already: not starting it again", crashed.Resource.Name, now);
            return null;
        }

        await notifications.PublishUpdateAsync(crashed.Resource, crashed.ResourceId, snapshot => snapshot with
        {
            Properties = SetProperty(snapshot.Properties, CrashRestarts.RestartsProperty, restarts.ToString(CultureInfo.InvariantCulture)),
        });
        var commands = services.GetRequiredService<ResourceCommandService>();
        var result = await StartRequests.AsRestarterAsync(
            () => commands.ExecuteCommandAsync(crashed.ResourceId, KnownResourceCommands.StartCommand, stoppingToken));
        stoppingToken.ThrowIfCancellationRequested();
        lock (tracker)
        {
            // Aspire shows FailedToStart, from within the Start, when the start threw (the Start then reports failure) or
            // when the resource's configuration could not be applied (the Start then reports success).
            var shown = notifications.TryGetCurrentState(crashed.ResourceId, out var after) ? after.Snapshot.State?.Text : null;
            if (result.Success && shown != KnownResourceStates.FailedToStart)
            {
                // Started. From here the state watch judges it: Running begins a run, and a FailedToStart or an exit
                // shown later is a crash of its own, restarted with the next back-off.
                if (tracker.Loop == loop)
                {
                    tracker.Loop = null;
                }

                return null;
            }

            return result.Success ? $"it shows {shown}" : result.Message ?? "the Start command failed";
        }
    }

    private static ImmutableArray<ResourcePropertySnapshot> SetProperty(ImmutableArray<ResourcePropertySnapshot> properties, string name, object value) =>
        [.. properties.Where(p => p.Name != name), new ResourcePropertySnapshot(name, value)];

    private sealed class Tracker
    {
        public string? LastState { get; set; }

        public bool StoppedOnPurpose { get; set; }

        public DateTimeOffset? RunningSince { get; set; }

        public int Crashes { get; set; }

        public int Restarts { get; set; }

        /// <summary>
        /// The pending restart, null when none is: each loop owns its own, so one that ends clears only itself (a field,
        /// read without the lock by <see cref="PublishPendingAsync"/>).
        /// </summary>
        public RestartLoop? Loop;

        /// <summary>The resource's <see cref="StartRequests"/> count when its current (or last) run began.</summary>
        public long StartsBeforeRun { get; set; }

        /// <summary>The resource's <see cref="StartRequests.StopCount"/> when its current (or last) run began.</summary>
        public long StopsBeforeRun { get; set; }
    }

    private sealed class RestartLoop
    {
        /// <summary>Completed by a Stop: the back-off or the grace ends at once.</summary>
        public TaskCompletionSource Wake { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
