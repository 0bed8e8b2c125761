using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Aspire.Hosting.Testing;
using EventPipeline.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace EventPipeline.EndToEnd.Tests;

/// <summary>
/// The ports the AppHost picks for its local processes lie below the kernel's ephemeral range: a port is picked when
/// the model is built and bound by its process seconds to minutes later (a RabbitMQ node after boot), and a port from
/// the ephemeral range can meanwhile become the local port of any outgoing connection on the machine (seen: a cluster
/// node failed with eaddrinuse).
/// </summary>
public sealed class LocalPortTests : IDisposable
{
    private readonly ScratchDirectory _data = new("ep-ports");

    public void Dispose() => _data.Dispose();

    [Fact]
    public async Task Ports_picked_for_local_processes_are_below_the_ephemeral_range_outgoing_connections_take_ports_from()
    {
        var ephemeralLow = int.Parse(File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[])['\t', ' '], StringSplitOptions.RemoveEmptyEntries)[0]);
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.AppHost>(
            [.. AppHostArguments.ForTest(_data.Path, "submit-" + Guid.NewGuid().ToString("N"), "admin-" + Guid.NewGuid().ToString("N"), "ports"),
             "Brokers:Topology=Cluster"]);
        await using var app = await builder.BuildNeverStartedAsync();
        var ports = app.Services.GetRequiredService<DistributedApplicationModel>().Resources
            .SelectMany(r => r.Annotations.OfType<EndpointAnnotation>().Where(e => !e.IsProxied && e.Port is not null)
                .Select(e => (Endpoint: $"{r.Name}/{e.Name}", Port: e.Port!.Value)))
            .ToList();

        Assert.True(ports.Count >= 20, $"only {ports.Count} local ports found");
        Assert.All(ports, p => Assert.True(p.Port < ephemeralLow, $"{p.Endpoint} got port {p.Port}, inside the ephemeral range (from {ephemeralLow})"));
    }

    [Fact]
    public void A_port_is_never_handed_to_two_local_processes_of_one_apphost()
    {
        // Each port is free when picked and bound by its process only later: two picks of the same free port (about
        // 1.6 % of Cluster-mode starts with 21 ports from ~12,700) made one process fail with eaddrinuse.
        var ports = Enumerable.Range(0, 500).Select(_ => LocalProcessResources.FreeLoopbackPort()).ToList();
        var twice = ports.GroupBy(p => p).Where(g => g.Count() > 1).Select(g => g.Key).ToList();
        Assert.True(twice.Count == 0, $"handed out more than once: {string.Join(", ", twice)}");
    }
}
