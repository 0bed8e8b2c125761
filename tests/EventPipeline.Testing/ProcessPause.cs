using System.Runtime.InteropServices;

namespace EventPipeline.Testing;

/// <summary>
/// SIGSTOP a process this test started, and SIGCONT it on dispose — always, so a failing assertion never leaves a
/// frozen broker behind: <c>await using (ProcessPause.Of(redis.Pid)) { … }</c>. A paused process keeps its sockets open,
/// which is how a slow (not dead) broker looks to a client.
/// </summary>
public sealed class ProcessPause : IAsyncDisposable
{
    private const int SigStop = 19;
    private const int SigCont = 18;
    private readonly int _pid;
    private int _resumed;

    private ProcessPause(int pid) => _pid = pid;

    public static ProcessPause Of(int pid)
    {
        // kill(2) reads 0 as "this process group" and -1 as "every process I may signal" (and -n as group n): a bad pid
        // would freeze the test host, or the whole machine's processes, CI's included.
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(pid);
        if (kill(pid, SigStop) != 0)
        {
            throw new InvalidOperationException($"SIGSTOP to {pid} failed (errno {Marshal.GetLastPInvokeError()})");
        }

        return new ProcessPause(pid);
    }

    public void Resume()
    {
        if (Interlocked.Exchange(ref _resumed, 1) == 0)
        {
            kill(_pid, SigCont);
        }
    }

    public ValueTask DisposeAsync()
    {
        Resume();
        return ValueTask.CompletedTask;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
