using System.Net.Sockets;
using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Aspire.Hosting.Testing;
using EventPipeline.Testing;
using Microsoft.Extensions.DependencyInjection;
using Xunit.Abstractions;

namespace EventPipeline.EndToEnd.Tests;

/// <summary>
/// A local RabbitMQ node registers with the AppHost's epmd resource and never starts an Erlang port mapper of its own,
/// also not when that epmd is gone: Aspire stops resources in no particular order, so at shutdown the epmd resource
/// may stop before a node, and a node can be started from the dashboard while epmd is down. A daemon started then
/// is no resource: it outlives the AppHost, and squats the port the epmd resource is given on its next start.
/// </summary>
public sealed class LocalRabbitMqEpmdTests(ITestOutputHelper output) : IDisposable
{
    private readonly ScratchDirectory _data = new("ep-epmd");

    public void Dispose() => _data.Dispose();

    [Fact]
    public async Task A_rabbitmq_node_whose_epmd_is_gone_starts_no_epmd_daemon_that_would_outlive_the_apphost()
    {
        var (command, workingDirectory, environment, amqpPort) = await NodeAsTheAppHostStartsItAsync();
        var home = environment["HOME"]!;
        output.WriteLine($"HOME={home} ERL_EPMD_PORT={environment["ERL_EPMD_PORT"]} ERL_FLAGS={environment.GetValueOrDefault("ERL_FLAGS")}");

        // Nothing listens on ERL_EPMD_PORT: the epmd resource is gone.
        await using var server = ChildProcess.Start("rabbitmq", command, [], environment, workingDirectory);
        var strays = new List<int>();
        try
        {
            // Done once the node either gave up (no epmd to register with) or booted (its start-up check for epmd is
            // long past), or once a daemon with its HOME showed up.
            await Eventually.TrueAsync(() => Task.FromResult(
                    server.HasExited || Accepts(amqpPort) || (strays = EpmdDaemonsWithHome(home)).Count > 0),
                TimeSpan.FromSeconds(90), "the node to give up or boot", TimeSpan.FromMilliseconds(200));
            strays = EpmdDaemonsWithHome(home);
            Assert.True(strays.Count == 0,
                $"epmd daemon(s) {string.Join(", ", strays)} started with the node's HOME {home} (node {(server.HasExited ? $"exited {server.ExitCode}" : "running")}):\n{server.OutputText}");
        }
        finally
        {
            await server.KillAsync(entireProcessTree: true);
            foreach (var pid in EpmdDaemonsWithHome(home))
            {
                // Only daemons this test's node started: their environment carries its HOME, a directory of this test.
                using var stray = System.Diagnostics.Process.GetProcessById(pid);
                stray.Kill();
            }
        }
    }

    /// <summary>
    /// The single node's command and environment exactly as the AppHost builds them, with the ports it chose (what DCP
    /// would allocate for these proxy-less endpoints). The application is disposed before the node starts: nothing of
    /// the AppHost runs, the epmd resource included.
    /// </summary>
    private async Task<(string Command, string WorkingDirectory, Dictionary<string, string?> Environment, int AmqpPort)> NodeAsTheAppHostStartsItAsync()
    {
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.AppHost>(
            [.. AppHostArguments.ForTest(_data.Path, "submit-" + Guid.NewGuid().ToString("N"), "admin-" + Guid.NewGuid().ToString("N"), "epmd"),
             "Monitoring:Enabled=false"]);
        await using var app = await builder.BuildNeverStartedAsync();
        var model = app.Services.GetRequiredService<DistributedApplicationModel>();
        var node = model.Resources.OfType<LocalRabbitMQResource>().Single(r => r.Name == "rabbitmq");
        var epmd = model.Resources.OfType<EpmdResource>().Single();
        foreach (var endpoint in node.Annotations.OfType<EndpointAnnotation>().Concat(epmd.Annotations.OfType<EndpointAnnotation>()))
        {
            endpoint.AllocatedEndpoint = new AllocatedEndpoint(endpoint, "127.0.0.1", endpoint.Port!.Value);
        }

        var context = app.Services.GetRequiredService<DistributedApplicationExecutionContext>();
        var configuration = await ExecutionConfigurationBuilder.Create(node).WithEnvironmentVariablesConfig().BuildAsync(context);
        return (node.Command, node.DataDirectory, configuration.EnvironmentVariables.ToDictionary(e => e.Key, e => (string?)e.Value), node.PrimaryEndpoint.Port);
    }

    private static bool Accepts(int port)
    {
        try
        {
            using var client = new TcpClient();
            client.Connect("127.0.0.1", port);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    /// <summary>Running epmd processes whose environment has <c>HOME=<paramref name="home"/></c>.</summary>
    private static List<int> EpmdDaemonsWithHome(string home) =>
        [.. Directory.EnumerateDirectories("/proc")
            .Select(d => int.TryParse(Path.GetFileName(d), out var pid) ? pid : 0)
            .Where(pid => pid > 0 && Read($"/proc/{pid}/comm").Trim() == "epmd"
                && Read($"/proc/{pid}/environ").Split('\0').Contains($"HOME={home}"))];

    private static string Read(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return "";
        }
    }
}
