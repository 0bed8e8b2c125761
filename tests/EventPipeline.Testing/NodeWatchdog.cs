namespace EventPipeline.Testing;

/// <summary>
/// Ends every process of one test broker (node VMs and all their helpers, its epmd, any rabbitmqctl) and deletes its
/// directory once the test process that made it is gone, however that process ended: kill -9 of the test host by
/// vstest 100 ms after a run, a CI cancel, the OOM killer. Each process of the broker is started with
/// <see cref="Variable"/>=<c>directory</c> in its environment (helpers inherit it, including the port programs
/// <c>erl_child_setup</c> puts in sessions of their own); the watchdog is a <c>sh</c> whose stdin is a pipe only this test
/// process writes to (.NET opens it close-on-exec, so no other child holds it). Reading EOF there means the test
/// process has exited or disposed the broker, and the kernel closes the pipe on any exit, so nothing polls a PID.
/// It then SIGKILLs the processes whose environment holds that entry, found and killed by PID one at a time, each right
/// after its environment is read again (review of s11-hygiene2, L1): a PID the broker no longer holds is never signalled. It repeats until none is left
/// (one may have forked meanwhile), then deletes the directory. It ignores HUP/INT/TERM/QUIT, which a CI job cancel or
/// an orphaned process group may send it: it must outlive the test host. Nodes lead groups of their own
/// (<c>setsid</c>), so such signals no longer reach them either.
/// </summary>
internal sealed class NodeWatchdog : IAsyncDisposable
{
    public const string Variable = "EP_TEST_BROKER";

    private const string Script =
        """
        trap '' HUP INT TERM QUIT
        while read -r _; do :; done
        n=0
        while [ "$n" -lt 100 ]; do
          found=
          for f in $(grep -lzxF -- "EP_TEST_BROKER=$0" /proc/[0-9]*/environ 2>/dev/null); do
            p=${f#/proc/}
            grep -qzxF -- "EP_TEST_BROKER=$0" "$f" 2>/dev/null && kill -9 "${p%/environ}" 2>/dev/null && found=1
          done
          [ -z "$found" ] && break
          n=$((n + 1))
          sleep 0.1
        done
        case "$0" in */ep-rabbit*) rm -rf -- "$0" 2>/dev/null ;; esac
        """;

    private readonly ChildProcess _process;
    private int _disposed;

    public NodeWatchdog(string directory)
    {
        Directory = directory;
        // setsid (execs in place: same PID, same pipe) takes the watchdog out of the test host's process group, so a
        // kill -9 of that group (a CI cancel, timeout -s KILL) does not end it with the host (review of s11-hygiene2, M2).
        _process = ChildProcess.Start("rabbitmq-watchdog", "setsid", ["sh", "-c", Script, directory], new Dictionary<string, string?>(),
            redirectStandardInput: true);
    }

    /// <summary>The broker's directory, the value of <see cref="Variable"/> in each of its processes.</summary>
    public string Directory { get; }

    /// <summary>Ends the broker now: every process that carries its mark, then its directory; returns once done.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _process.CloseStandardInput();
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        try
        {
            await _process.WaitForExitAsync(deadline.Token);
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"the watchdog of {Directory} did not finish within 30 s: {_process.OutputText}");
        }

        await _process.DisposeAsync();
    }
}
