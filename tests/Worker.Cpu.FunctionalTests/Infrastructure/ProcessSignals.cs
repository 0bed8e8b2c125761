using System.Runtime.InteropServices;

namespace EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;

/// <summary>
/// SIGSTOP / SIGCONT for a process the test started (by its PID): a worker frozen as by a long GC pause, a stalled VM
/// or a debugger, without dying. Use <see cref="Pause"/> in a <c>using</c>, so the process is always resumed.
/// </summary>
public static class ProcessSignals
{
    private const int SIGCONT = 18;
    private const int SIGSTOP = 19;

    public static IAsyncDisposable Pause(int pid)
    {
        if (kill(pid, SIGSTOP) != 0)
        {
            throw new InvalidOperationException($"SIGSTOP to {pid} failed: errno {Marshal.GetLastPInvokeError()}");
        }

        return new Resume(pid);
    }

    private sealed class Resume(int pid) : IAsyncDisposable
    {
        public ValueTask DisposeAsync()
        {
            _ = kill(pid, SIGCONT);
            return ValueTask.CompletedTask;
        }
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
