using Aspire.Hosting.ApplicationModel;
using Microsoft.Extensions.Configuration;

namespace Aspire.Hosting;

/// <summary>
/// What every resource the AppHost runs as a local process shares: its own loopback port, and a data directory beside
/// the others' (<c>Brokers:DataDirectory</c>, a temp directory in tests; <c>AppHost/.data</c> otherwise).
/// </summary>
internal static class LocalProcessResources
{
    /// <summary>
    /// A proxy-less endpoint on a free loopback port chosen now; the process listens on it itself. Erlang's
    /// distribution (epmd registration, node ports) does not work through Aspire's TCP proxy, and a proxy hop would
    /// only add latency to every call. Picking the port at start also keeps clear of anything system-wide on the
    /// default ports.
    /// </summary>
    public static IResourceBuilder<T> WithLocalPort<T>(this IResourceBuilder<T> builder, string name, string scheme) where T : IResourceWithEndpoints
    {
        var port = FreeLoopbackPort();
        return builder.WithEndpoint(port: port, targetPort: port, scheme: scheme, name: name, isProxied: false);
    }

    public static int FreeLoopbackPort()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }

    public static string LocalDataDirectory(this IDistributedApplicationBuilder builder, string name)
    {
        var root = builder.Configuration["Brokers:DataDirectory"] is { Length: > 0 } configured
            ? configured
            : Path.Combine(builder.AppHostDirectory, ".data");
        var directory = Path.GetFullPath(Path.Combine(root, name));
        if (OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(directory);
        }
        else
        {
            // The owner's alone: the brokers write password-bearing files here themselves (Redis's CONFIG REWRITE and
            // a Sentinel's config rewrite replace the file with mode 0644), so the directory is what keeps them private.
            Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            File.SetUnixFileMode(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        return directory;
    }

    /// <summary>Those of the executables (names looked up on PATH, or absolute paths) that are not installed.</summary>
    public static List<string> MissingExecutables(params string[] executables) =>
        [.. executables.Where(executable => !(Path.IsPathRooted(executable)
            ? File.Exists(executable)
            : (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator).Any(dir => File.Exists(Path.Combine(dir, executable)))))];
}
