namespace EventPipeline.Testing;

/// <summary>
/// Starts one of the pipeline's services (already built) as a real process: <c>dotnet &lt;Service&gt;.dll</c> from
/// the repository's bin folder, on a free port, with the given configuration as environment variables.
/// Chaos tests need real processes to kill.
/// </summary>
public static class ServiceProcess
{
    public static string RepositoryRoot { get; } = FindRepositoryRoot();

    public static ChildProcess Start(string project, IDictionary<string, string?> configuration, out int httpPort)
    {
        var dll = Path.Combine(RepositoryRoot, project, "bin", BuildConfiguration, "net10.0", project + ".dll");
        if (!File.Exists(dll))
        {
            throw new FileNotFoundException($"{dll} is not built; build the solution first", dll);
        }

        httpPort = LocalPorts.Free();
        var environment = new Dictionary<string, string?>(configuration)
        {
            ["ASPNETCORE_URLS"] = $"http://127.0.0.1:{httpPort}",
            ["ASPNETCORE_ENVIRONMENT"] = configuration.TryGetValue("ASPNETCORE_ENVIRONMENT", out var env) ? env : "Development",
            ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1",
            ["OTEL_EXPORTER_OTLP_ENDPOINT"] = configuration.TryGetValue("OTEL_EXPORTER_OTLP_ENDPOINT", out var otlp) ? otlp : "",
        };
        return ChildProcess.Start(project, "dotnet", [dll], environment, Path.GetDirectoryName(dll));
    }

    /// <summary>Waits until the service answers <c>/health/ready</c> with 200.</summary>
    public static async Task WaitUntilReadyAsync(ChildProcess process, int httpPort, TimeSpan timeout)
    {
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{httpPort}"), Timeout = TimeSpan.FromSeconds(5) };
        await Eventually.TrueAsync(async () =>
        {
            if (process.HasExited)
            {
                throw new InvalidOperationException($"{process.Name} exited with {process.ExitCode}:\n{string.Join('\n', process.Output.TakeLast(60))}");
            }

            return (await http.GetAsync("/health/ready")).IsSuccessStatusCode;
        }, timeout, $"{process.Name} to be ready on port {httpPort}", TimeSpan.FromMilliseconds(200));
    }

#if DEBUG
    private const string BuildConfiguration = "Debug";
#else
    private const string BuildConfiguration = "Release";
#endif

    private static string FindRepositoryRoot()
    {
        var directory = new DirectoryInfo(AppContext.BaseDirectory);
        while (directory is not null && !File.Exists(Path.Combine(directory.FullName, "EventPipeline.sln")))
        {
            directory = directory.Parent;
        }

        return directory?.FullName ?? throw new InvalidOperationException("EventPipeline.sln not found above " + AppContext.BaseDirectory);
    }
}
