using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace EventPipeline.Testing;

/// <summary>
/// A process a test started: output captured, and ended only by its own PID — SIGKILL (crash), SIGTERM (graceful
/// stop) or both on dispose.
/// </summary>
public sealed class ChildProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly ConcurrentQueue<string> _output = new();

    private ChildProcess(Process process, string name)
    {
        _process = process;
        Name = name;
    }

    public string Name { get; }

    public int Pid => _process.Id;

    public bool HasExited => _process.HasExited;

    public int? ExitCode => _process.HasExited ? _process.ExitCode : null;

    public IReadOnlyCollection<string> Output => _output;

    public string OutputText => string.Join('\n', _output);

    /// <param name="redirectStandardInput">
    /// Give the process a pipe for stdin that only this process holds (close-on-exec, as .NET opens it): the process
    /// reads EOF once this one closes it (<see cref="CloseStandardInput"/>) or exits, however.
    /// </param>
    public static ChildProcess Start(string name, string fileName, IEnumerable<string> arguments, IDictionary<string, string?> environment,
        string? workingDirectory = null, bool redirectStandardInput = false)
    {
        var info = new ProcessStartInfo(fileName)
        {
            RedirectStandardInput = redirectStandardInput,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        foreach (var argument in arguments)
        {
            info.ArgumentList.Add(argument);
        }

        foreach (var (key, value) in environment)
        {
            info.Environment[key] = value;
        }

        var process = new Process { StartInfo = info, EnableRaisingEvents = true };
        var child = new ChildProcess(process, name);
        process.OutputDataReceived += (_, e) => child.Append(e.Data);
        process.ErrorDataReceived += (_, e) => child.Append(e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return child;
    }

    private void Append(string? line)
    {
        if (line is null)
        {
            return;
        }

        _output.Enqueue(line);
        while (_output.Count > 5000 && _output.TryDequeue(out _))
        {
        }
    }

    /// <summary>kill -9: no cleanup, no acknowledgements — what a crash or an OOM kill does.</summary>
    /// <param name="entireProcessTree">
    /// Also kill its descendants: needed when the process is a launcher script that does not exec its server (the
    /// server would live on, and the wait for exit would never end while it holds the output pipes). .NET SIGSTOPs each
    /// process of the tree before it lists its children and kills it: if this process is ended meanwhile, the rest
    /// stays stopped for good. A process started through <c>setsid</c> is better ended by <see cref="KillGroupAsync"/>.
    /// </param>
    public async Task KillAsync(bool entireProcessTree = false)
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree);
        }

        await _process.WaitForExitAsync();
    }

    /// <summary>
    /// kill -9 of the process group this process leads (started through <c>setsid</c>, which execs in place: the PID is
    /// the group's id), in one syscall: the process and every descendant that stayed in its group die together. Unlike
    /// <c>Process.Kill(entireProcessTree: true)</c>, which SIGSTOPs each process before listing its children and only then
    /// kills it, nothing is left stopped when this process is itself ended half-way (vstest SIGKILLs the test host
    /// 100 ms after the run, during exit handlers: stopped <c>erl_child_setup</c>/<c>inet_gethost</c> orphans stayed).
    /// Falls back to the PID alone when the process is not a group leader.
    /// </summary>
    public async Task KillGroupAsync()
    {
        KillGroupNow();
        await _process.WaitForExitAsync();
    }

    /// <summary>The signal of <see cref="KillGroupAsync"/> without waiting (process-exit handlers).</summary>
    public void KillGroupNow()
    {
        if (_process.HasExited)
        {
            return;
        }

        _ = getpgid(_process.Id) == _process.Id ? kill(-_process.Id, SIGKILL) : kill(_process.Id, SIGKILL);
    }

    /// <summary>SIGTERM, as Kubernetes sends on scale-down; returns how long the process took to exit.</summary>
    public async Task<TimeSpan> TerminateAsync(TimeSpan timeout)
    {
        var watch = Stopwatch.StartNew();
        if (!_process.HasExited)
        {
            _ = kill(_process.Id, SIGTERM);
        }

        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            await KillAsync();
            throw new TimeoutException($"{Name} (pid {Pid}) did not exit within {timeout} of SIGTERM");
        }

        return watch.Elapsed;
    }

    public Task WaitForExitAsync(CancellationToken cancellationToken = default) => _process.WaitForExitAsync(cancellationToken);

    /// <summary>Closes this side of the stdin pipe (started with <c>redirectStandardInput</c>): the process reads EOF.</summary>
    public void CloseStandardInput() => _process.StandardInput.Close();

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            try
            {
                await TerminateAsync(TimeSpan.FromSeconds(10));
            }
            catch (TimeoutException)
            {
            }
        }

        _process.Dispose();
    }

    private const int SIGTERM = 15;
    private const int SIGKILL = 9;

    [DllImport("libc", SetLastError = true)]
    private static extern int getpgid(int pid);

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
