using System.Globalization;

namespace EventPipeline.Bench.Observe;

/// <summary>Reads what Linux's /proc says about a process: parent, memory (VmRSS, VmHWM) and CPU time (utime+stime).</summary>
public static class ProcFs
{
    /// <summary>USER_HZ: the unit of utime/stime. 100 on every Linux the tool is meant for.</summary>
    private const double ClockTicksPerSecond = 100;

    public static bool IsAvailable => Directory.Exists("/proc/self");

    /// <summary>
    /// The processes that make up a service started as <paramref name="rootPid"/>: the root and all its descendants,
    /// without the <c>dotnet run</c> launcher Aspire puts in front of a project (it only waits for its child).
    /// </summary>
    public static IReadOnlyList<int> ServiceProcesses(int rootPid) => ServiceProcesses(Children(), rootPid);

    /// <summary>
    /// <see cref="ServiceProcesses(int)"/> of several services from one walk of /proc: the process sampler rescans
    /// every service every 2 s inside the measured window, and a walk reads the stat file of every process on the
    /// machine (hundreds while builds run beside a bench), so one walk per rescan instead of one per service.
    /// </summary>
    public static Dictionary<string, IReadOnlyList<int>> ServiceProcesses(IReadOnlyDictionary<string, int> rootPids)
    {
        var children = Children();
        return rootPids.ToDictionary(r => r.Key, r => ServiceProcesses(children, r.Value), StringComparer.Ordinal);
    }

    private static Dictionary<int, List<int>> Children()
    {
        var children = new Dictionary<int, List<int>>();
        foreach (var dir in SafeEnumerate())
        {
            if (int.TryParse(Path.GetFileName(dir), out var pid) && TryParent(pid, out var parent))
            {
                (children.TryGetValue(parent, out var list) ? list : children[parent] = []).Add(pid);
            }
        }

        return children;
    }

    private static IReadOnlyList<int> ServiceProcesses(Dictionary<int, List<int>> children, int rootPid)
    {
        var result = new List<int>();
        var stack = new Stack<int>([rootPid]);
        while (stack.Count > 0)
        {
            var pid = stack.Pop();
            if (!Directory.Exists($"/proc/{pid}"))
            {
                continue;
            }

            if (!(IsDotnetRunLauncher(pid) && children.ContainsKey(pid)))
            {
                result.Add(pid);
            }

            foreach (var child in children.GetValueOrDefault(pid) ?? [])
            {
                stack.Push(child);
            }
        }

        return result;
    }

    /// <summary>Processes whose command line contains <paramref name="fragment"/> (for a system the tool did not start).</summary>
    public static IReadOnlyList<int> FindByCommandLine(string fragment) =>
        [.. SafeEnumerate()
            .Select(d => int.TryParse(Path.GetFileName(d), out var pid) ? pid : -1)
            .Where(pid => pid > 0 && pid != System.Environment.ProcessId && CommandLine(pid).Contains(fragment, StringComparison.Ordinal))];

    public static string CommandLine(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ').Trim();
        }
        catch (IOException)
        {
            return "";
        }
        catch (UnauthorizedAccessException)
        {
            return "";
        }
    }

    /// <summary>One environment variable of a running process (how the tool learns a service's own listening port).</summary>
    public static string? EnvironmentVariable(int pid, string name)
    {
        try
        {
            var prefix = name + "=";
            return File.ReadAllText($"/proc/{pid}/environ").Split('\0')
                .FirstOrDefault(e => e.StartsWith(prefix, StringComparison.Ordinal))?[prefix.Length..];
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Resident and peak-resident memory in bytes, or null when the process is gone.</summary>
    public static (long Rss, long Hwm)? Memory(int pid)
    {
        try
        {
            long rss = 0, hwm = 0;
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            {
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                {
                    rss = Kilobytes(line);
                }
                else if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                {
                    hwm = Kilobytes(line);
                }
            }

            return (rss * 1024, hwm * 1024);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>CPU time (user + system) the process has used since it started, or null when it is gone.</summary>
    public static TimeSpan? CpuTime(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            // The command name (field 2) may hold spaces; the fields after its closing parenthesis are fixed.
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
            return TimeSpan.FromSeconds(ticks / ClockTicksPerSecond);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return null;
        }
    }

    private static bool TryParent(int pid, out int parent)
    {
        parent = 0;
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return int.TryParse(fields[1], out parent);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or IndexOutOfRangeException)
        {
            return false;
        }
    }

    private static bool IsDotnetRunLauncher(int pid)
    {
        var cmd = CommandLine(pid);
        return cmd.Contains(" run ", StringComparison.Ordinal) && cmd.Contains("--project", StringComparison.Ordinal);
    }

    private static long Kilobytes(string line) =>
        long.TryParse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], out var kb) ? kb : 0;

    private static IEnumerable<string> SafeEnumerate()
    {
        try
        {
            return Directory.EnumerateDirectories("/proc").ToList();
        }
        catch (IOException)
        {
            return [];
        }
    }

    /// <summary>
    /// CPU time the whole machine spent busy (every state of /proc/stat's first line but idle and iowait), over all
    /// cores: with the services' own figures it shows what else took the cores during a scenario.
    /// </summary>
    public static TimeSpan? MachineBusyTime()
    {
        try
        {
            var line = File.ReadLines("/proc/stat").First();
            var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1).Take(8)
                .Select(f => long.Parse(f, CultureInfo.InvariantCulture)).ToArray();
            var busy = fields.Sum() - fields[3] - fields[4];
            return TimeSpan.FromSeconds(busy / ClockTicksPerSecond);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException or InvalidOperationException)
        {
            return null;
        }
    }
}
