using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using Aspire.Hosting.ApplicationModel;

namespace Aspire.Hosting;

/// <summary>
/// Counts, per resource instance, the lifecycle Start commands sent by anyone but the <see cref="CrashRestarter"/>: the
/// dashboard, the CLI, a test (the bench's chaos mode runs with the restarter off). The restarter needs to know that a start was asked for, not
/// only what state the resource shows: under load the orchestrator showed a resource <c>Finished</c> for 1.85 s while
/// someone else's Start was executing, and the restarter, seeing it still down, started it a second time.
/// It counts every Stop too, Aspire's lifecycle Stop and the restarter's "Stop restarting"
/// (<see cref="CrashRestarts.StopRestartingCommand"/>): a worker whose restart keeps failing never shows the
/// <c>Stopping</c> state, the only other sign of a Stop, as Aspire's Stop on a resource that is down fails or does
/// nothing (review of s12-restarter3, M1).
/// </summary>
/// <remarks>
/// Aspire's Start command (<see cref="KnownResourceCommands.StartCommand"/>) is a <see cref="ResourceCommandAnnotation"/>
/// that Aspire adds to every project, executable and container; <see cref="ResourceCommandService"/> looks it up by name
/// on each execution. <see cref="Watch"/> swaps it for one that counts and then runs Aspire's own delegate, everything
/// else copied, so the dashboard shows the same command.
/// </remarks>
internal sealed class StartRequests
{
    // Set around the restarter's own Start; an AsyncLocal because ResourceCommandService awaits the command's delegate in
    // the caller's flow, so the flag reaches the wrapper without leaking to anyone else's concurrent Start. Known limit
    // (review of s10-restarter, L2): it also flows into all Aspire does for that Start (the orchestrator, its
    // BeforeResourceStartedEvent subscribers, tasks they start); a Start command sent from there would not be counted.
    // Nothing there sends one (Aspire 13.6.5, this AppHost), so it is left as it is.
    private static readonly AsyncLocal<bool> SentByRestarter = new();

    private readonly ConcurrentDictionary<string, long> _counts = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, long> _stops = new(StringComparer.Ordinal);
    private readonly ConditionalWeakTable<ResourceCommandAnnotation, object> _wrappers = new();
    private readonly Lock _wrapping = new();

    /// <summary>How many Starts others have sent to <paramref name="resourceId"/> (a replica's instance name) so far.</summary>
    public long Count(string resourceId) => _counts.GetValueOrDefault(resourceId);

    /// <summary>How many Stops anyone has sent to <paramref name="resourceId"/> so far (the restarter sends none).</summary>
    public long StopCount(string resourceId) => _stops.GetValueOrDefault(resourceId);

    /// <summary>Raised with the resource id after a Stop was counted, before it runs: a pending restart ends at once.</summary>
    public event Action<string>? StopRequested;

    /// <summary>Counts a Stop of <paramref name="resourceId"/>, whatever it then does.</summary>
    public void RecordStop(string resourceId)
    {
        _stops.AddOrUpdate(resourceId, 1, (_, n) => n + 1);
        StopRequested?.Invoke(resourceId);
    }

    /// <summary>Runs the restarter's own Start, which is not counted.</summary>
    public static async Task<T> AsRestarterAsync<T>(Func<Task<T>> start)
    {
        // The flag is restored when this method returns: an async method's AsyncLocal changes do not flow back out.
        SentByRestarter.Value = true;
        return await start();
    }

    /// <summary>
    /// Wraps <paramref name="resource"/>'s Start and Stop commands once they exist (idempotent, cheap when done); false
    /// while the Start does not exist or cannot be copied faithfully, when only the resource's state guards against a
    /// second start (and only a <c>Stopping</c> state tells of a Stop).
    /// </summary>
    public bool Watch(IResource resource)
    {
        lock (_wrapping)
        {
            var startWrapped = false;
            var annotations = resource.Annotations;
            for (var i = 0; i < annotations.Count; i++)
            {
                if (annotations[i] is not ResourceCommandAnnotation original
                    || (original.Name != KnownResourceCommands.StartCommand && original.Name != KnownResourceCommands.StopCommand))
                {
                    continue;
                }

                var isStart = original.Name == KnownResourceCommands.StartCommand;
                // Progress has no public setter; Aspire's own Start and Stop have none (they are built with the public
                // constructor), and a command that had one is left as it is rather than shown differently.
                if (_wrappers.TryGetValue(original, out _) || original.Progress is not null)
                {
                    startWrapped |= isStart && _wrappers.TryGetValue(original, out _);
                    continue;
                }

                var execute = original.ExecuteCommand;
                var wrapper = new ResourceCommandAnnotation(
                    original.Name,
                    original.DisplayName,
                    original.UpdateState,
                    context =>
                    {
                        if (!isStart)
                        {
                            RecordStop(context.ResourceName);
                        }
                        else if (!SentByRestarter.Value)
                        {
                            _counts.AddOrUpdate(context.ResourceName, 1, (_, n) => n + 1);
                        }

                        return execute(context);
                    },
                    original.DisplayDescription,
                    original.Arguments,
                    original.ConfirmationMessage,
                    original.IconName,
                    original.IconVariant,
                    original.IsHighlighted,
                    original.Visibility,
                    original.ValidateArguments);
                _wrappers.Add(wrapper, new object());
                // In place: the dashboard lists commands in annotation order, and the lookup by name wants exactly one.
                // Known limit (review of s10-restarter, L1): Aspire's own writers do not take this lock, so an annotation
                // removed or inserted before slot i between the read above and this write would put the wrapper over
                // another annotation and leave two Starts (every Start would then fail). In Aspire's source (13.3, read for
                // this) the only run-time removal from a project is of its static URLs (ResourceUrlAnnotation, when the
                // URL callbacks run), and the workers that restart on crash have none; 13.6.5's annotation list makes
                // each read and write thread-safe.
                annotations[i] = wrapper;
                startWrapped |= isStart;
            }

            return startWrapped;
        }
    }
}
