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

    /// <summary>
    /// A loopback port free now, below the kernel's ephemeral range. The process binds it seconds to minutes later (a
    /// RabbitMQ node after its boot); a port from the ephemeral range (what binding to port 0 hands out) can become the
    /// local port of any outgoing connection on the machine meanwhile, and the process then fails with eaddrinuse
    /// (seen on a busy machine). Ports below that range are never taken that way.
    /// </summary>
    public static int FreeLoopbackPort()
    {
        var (low, high) = (LowestPort, Math.Min(EphemeralRangeStart(), 65536) - 1);
        for (var attempt = 0; attempt < 200; attempt++)
        {
            var port = Random.Shared.Next(low, high + 1);
            // Free now is not enough: a port handed to another resource of this AppHost is free too until that
            // resource's process binds it (a Cluster-mode model picks about 21; two of them drew the same one).
            lock (HandedOut)
            {
                if (!HandedOut.Add(port))
                {
                    continue;
                }
            }

            try
            {
                using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, port);
                listener.Start();
                return port;
            }
            catch (System.Net.Sockets.SocketException)
            {
                // In use: try another (and keep this one out: someone holds it).
            }
        }

        throw new InvalidOperationException($"no free loopback port between {low} and {high}");
    }

    /// <summary>Above the well-known and commonly configured service ports.</summary>
    private const int LowestPort = 20000;

    /// <summary>Every port this process has handed out: never handed out twice.</summary>
    private static readonly HashSet<int> HandedOut = [];

    private static int EphemeralRangeStart()
    {
        try
        {
            var range = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[])['\t', ' ', '\n'], StringSplitOptions.RemoveEmptyEntries);
            return int.Parse(range[0], System.Globalization.CultureInfo.InvariantCulture) is var start and > LowestPort + 1000 ? start : 32768;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException)
        {
            return 32768; // Linux's default; other systems start theirs at 49152
        }
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
