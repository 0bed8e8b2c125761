using System.Reflection;

namespace EventPipeline.Bench.Load;

/// <summary>
/// Lets the bench process run socket completions on the runtime's epoll threads instead of handing each one to a
/// thread-pool worker. The load generator shares the 2 cores with the system it measures; its profile
/// (docs/benchmarks-history.md, "Session 6: bench client") showed most of its CPU per single POST in waking thread-pool
/// workers (context switches, spinning), not in HTTP. Its continuations are short (check a status, write the next
/// request), which is the case the runtime's switch is for. Only this process is affected: the runtime reads
/// <c>DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS</c> once, when its socket engine is created, and the variable is
/// removed again right after, so that the AppHost's children (the orchestrator, the brokers and the services, which
/// inherit this process's environment) keep their own defaults.
/// </summary>
public static class InlineSocketCompletions
{
    /// <summary>Set in the project file (RuntimeHostConfigurationOption), so a paired run can flip it in the runtimeconfig.</summary>
    public const string Switch = "EventPipeline.Bench.InlineSocketCompletions";

    private const string Variable = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

    /// <returns>Whether socket completions run inline in this process (false when the switch is off or the runtime has no such mode).</returns>
    public static bool Enable()
    {
        if (!AppContext.TryGetSwitch(Switch, out var wanted) || !wanted || Environment.GetEnvironmentVariable(Variable) is not null)
        {
            return Read() ?? false;
        }

        Environment.SetEnvironmentVariable(Variable, "1");
        try
        {
            return Read() ?? false;
        }
        finally
        {
            Environment.SetEnvironmentVariable(Variable, null);
        }
    }

    /// <summary>
    /// Reading the engine's static field runs its type initializer, which reads the variable (and starts the epoll
    /// threads); null when this runtime has no such field (the variable then had no effect either).
    /// </summary>
    private static bool? Read() =>
        typeof(System.Net.Sockets.Socket).Assembly.GetType("System.Net.Sockets.SocketAsyncEngine")
            ?.GetField("InlineSocketCompletionsEnabled", BindingFlags.NonPublic | BindingFlags.Static)
            ?.GetValue(null) as bool?;
}
