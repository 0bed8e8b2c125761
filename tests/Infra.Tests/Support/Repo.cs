using System.Diagnostics;

namespace EventPipeline.Infra.Tests.Support;

/// <summary>Paths in the repository and the few local programs the tests run (kubectl, git). No network.</summary>
public static class Repo
{
    public static string Root { get; } = FindRoot();

    public static string K8s => Path.Combine(Root, "infra", "k8s");

    public static string Schemas => Path.Combine(K8s, "schemas");

    public static string PathOf(params string[] parts) => Path.Combine([Root, .. parts]);

    public static string Read(params string[] parts) => File.ReadAllText(PathOf(parts));

    /// <summary>The C# sources of one project folder (bin/obj excluded), concatenated.</summary>
    public static string SourceOf(string project) =>
        string.Join("\n", Directory.EnumerateFiles(PathOf(project), "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}") &&
                        !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}"))
            .Order(StringComparer.Ordinal)
            .Select(File.ReadAllText));

    public static (int ExitCode, string Stdout, string Stderr) Run(string fileName, string workingDirectory, params string[] args)
    {
        var psi = new ProcessStartInfo(fileName)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
        {
            psi.ArgumentList.Add(arg);
        }

        using var process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {fileName}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromSeconds(60)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{fileName} {string.Join(' ', args)} did not finish within 60 s");
        }

        return (process.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>kubectl from PATH, else the machine image's /usr/bin/kubectl.</summary>
    public static string Kubectl { get; } =
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator)
            .Select(dir => Path.Combine(dir, "kubectl"))
            .FirstOrDefault(File.Exists) ?? "/usr/bin/kubectl";

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "EventPipeline.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException("EventPipeline.sln not found above " + AppContext.BaseDirectory);
    }
}
