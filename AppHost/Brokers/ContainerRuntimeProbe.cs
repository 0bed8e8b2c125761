using System.Diagnostics;

namespace EventPipeline.AppHost.Brokers;

/// <summary>
/// Decides whether the brokers run as containers or as local executables. A docker/podman CLI alone is not
/// enough (these machines ship the docker client without an engine): the engine has to answer <c>info</c>.
/// </summary>
internal static class ContainerRuntimeProbe
{
    public static bool IsHealthy(TimeSpan timeout)
    {
        var configured = Environment.GetEnvironmentVariable("ASPIRE_CONTAINER_RUNTIME")
            ?? Environment.GetEnvironmentVariable("DOTNET_ASPIRE_CONTAINER_RUNTIME");
        string[] candidates = configured is { Length: > 0 } ? [configured] : ["docker", "podman"];
        return candidates.Any(runtime => Answers(runtime, timeout));
    }

    private static bool Answers(string runtime, TimeSpan timeout)
    {
        try
        {
            using var process = Process.Start(new ProcessStartInfo(runtime, "info --format {{.ServerVersion}}")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            });
            if (process is null)
            {
                return false;
            }

            if (!process.WaitForExit(timeout))
            {
                process.Kill(entireProcessTree: true);
                return false;
            }

            return process.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false; // not installed
        }
    }
}
