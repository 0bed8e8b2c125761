using System.Globalization;

namespace EventPipeline.Testing;

/// <summary>
/// The process tree read from /proc: Aspire runs a project as <c>dotnet run</c> (the PID it reports), and the service
/// is that process's child. Tests use it to find, and then signal by PID, only a process their own AppHost started.
/// </summary>
public static class ProcessTree
{
    public static IEnumerable<int> ChildrenOf(int pid) =>
        Directory.EnumerateDirectories("/proc")
            .Select(d => int.TryParse(Path.GetFileName(d), out var p) ? p : 0)
            .Where(p => p > 0 && ParentOf(p) == pid);

    /// <summary>The child of <paramref name="pid"/> whose executable's file name is <paramref name="executable"/>, or 0.</summary>
    public static int ChildRunning(int pid, string executable) =>
        ChildrenOf(pid).SingleOrDefault(p => Path.GetFileName(ExecutableOf(p)) == executable);

    public static int? ParentOf(int pid)
    {
        try
        {
            // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so read after the last ')'.
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return int.Parse(fields[1], CultureInfo.InvariantCulture);
        }
        catch (IOException)
        {
            return null; // exited meanwhile
        }
    }

    public static string ExecutableOf(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline").Split('\0')[0];
        }
        catch (IOException)
        {
            return "";
        }
    }
}
