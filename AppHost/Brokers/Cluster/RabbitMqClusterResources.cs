using System.Security.Cryptography;
using Aspire.Hosting.ApplicationModel;
using EventPipeline.AppHost.Brokers;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Aspire.Hosting;

/// <summary>
/// <c>Brokers:Topology=Cluster</c>: three Debian <c>rabbitmq-server</c> nodes on loopback (<c>rabbitmq-0..2</c>, each with
/// its own node name, ports and data directory, one Erlang cookie, one epmd) joined into one cluster, and a
/// <c>rabbitmq</c> connection string naming all three that the services get. Quorum queues declared on it have a
/// member on every node, so the I/O lane keeps every confirmed event and keeps running while any two nodes live.
/// </summary>
public static class RabbitMqClusterResources
{
    public const int NodeCount = 3;

    public static IResourceBuilder<IResourceWithConnectionString> AddPipelineRabbitMQCluster(
        this IDistributedApplicationBuilder builder, string name, BrokerHosting hosting,
        IResourceBuilder<ParameterResource> userName, IResourceBuilder<ParameterResource> password)
    {
        if (hosting == BrokerHosting.Containers)
        {
            // Containers would need a shared network with resolvable node names and a cookie secret: not built yet.
            throw new DistributedApplicationException(
                "Brokers:Topology=Cluster runs RabbitMQ as three local rabbitmq-server processes; run it with Brokers:Mode=Executables " +
                $"(install the brokers with `{BrokerResourceExtensions.InstallCommand}`), or use Brokers:Topology=Single with containers.");
        }

        var clusterDirectory = builder.LocalDataDirectory($"{name}-cluster");
        var home = Path.Combine(clusterDirectory, "home");
        var epmd = builder.AddLocalEpmd($"{name}-epmd", clusterDirectory);

        var nodes = Enumerable.Range(0, NodeCount)
            .Select(index => builder.AddClusterNode($"{name}-{index}", $"eventpipeline-{name}-0@localhost", home, epmd, userName, password))
            .ToList();
        foreach (var node in nodes.Skip(1).Where(n => IsBlank(n.Resource)))
        {
            // A blank node that cannot reach the seed boots a cluster of its own (seen here when all three started
            // together): on its first boot it starts only once the seed accepts connections.
            node.WaitFor(nodes[0]);
        }

        var connectionString = new ReferenceExpressionBuilder();
        connectionString.Append($"amqp://{userName.Resource}:{password.Resource}@");
        for (var index = 0; index < nodes.Count; index++)
        {
            if (index > 0)
            {
                connectionString.AppendLiteral(",");
            }

            connectionString.Append($"{nodes[index].Resource.PrimaryEndpoint.Property(EndpointProperty.HostAndPort)}");
        }

        var cluster = builder.AddConnectionString(name, connectionString.Build())
            .WithAnnotation(new RabbitMqClusterNodesAnnotation([.. nodes.Select(n => n.Resource)]));
        foreach (var node in nodes)
        {
            // Services that wait for the connection string wait until every node accepts AMQP (i.e. has joined).
            cluster.WaitFor(node);
        }

        return cluster;
    }

    /// <summary>The broker Prometheus scrapes: the node itself, or the first node of a cluster.</summary>
    public static IResourceBuilder<IResourceWithConnectionString> ScrapedRabbitMQNode(this IResourceBuilder<IResourceWithConnectionString> rabbitmq) =>
        rabbitmq.Resource.Annotations.OfType<RabbitMqClusterNodesAnnotation>().FirstOrDefault() is { } cluster
            ? rabbitmq.ApplicationBuilder.CreateResourceBuilder<IResourceWithConnectionString>(cluster.Nodes[0])
            : rabbitmq;

    private static IResourceBuilder<LocalRabbitMQResource> AddClusterNode(this IDistributedApplicationBuilder builder, string name, string seedNode,
        string home, IResourceBuilder<EpmdResource> epmd, IResourceBuilder<ParameterResource> userName, IResourceBuilder<ParameterResource> password)
    {
        // The single node's setup (BrokerResourceExtensions.AddLocalRabbitMQNode), with the shared HOME (one Erlang
        // cookie for all nodes) and the cluster's peer discovery in rabbitmq.conf.
        return builder.AddLocalRabbitMQNode(name, builder.LocalDataDirectory(name), epmd, userName, password, resource =>
        {
            WriteSharedCookie(home);
            return (home, WriteNodeConfig(resource.DataDirectory, seedNode));
        });
    }

    /// <summary>
    /// Every node names the seed (<c>rabbitmq-0</c>) as its classic-config peer. The seed finds only itself and boots
    /// at once; a blank node joins it on its first boot. A node with data rejoins from its own records, so the nodes
    /// start together on every later run (ordering them would deadlock: a node that was not the last to stop waits
    /// for the one that was).
    /// </summary>
    private static string WriteNodeConfig(string dataDirectory, string seedNode)
    {
        var path = Path.Combine(dataDirectory, "rabbitmq.conf");
        File.WriteAllText(path, $"""
            loopback_users = none
            cluster_formation.peer_discovery_backend = classic_config
            cluster_formation.classic_config.nodes.1 = {seedNode}
            cluster_formation.discovery_retry_limit = 60
            cluster_formation.discovery_retry_interval = 1000
            """ + "\n");
        return path;
    }

    private static bool IsBlank(LocalRabbitMQResource node)
    {
        var mnesia = Path.Combine(node.DataDirectory, "mnesia");
        return !Directory.Exists(mnesia) || !Directory.EnumerateFileSystemEntries(mnesia).Any();
    }

    /// <summary>One cookie for every node (Erlang refuses peers with another), made once and kept with the data.</summary>
    private static void WriteSharedCookie(string home)
    {
        Directory.CreateDirectory(home);
        var path = Path.Combine(home, ".erlang.cookie");
        if (File.Exists(path))
        {
            return;
        }

        // Written aside and moved into place: a node never reads a half-written cookie, and the first writer wins.
        var draft = path + "." + Guid.NewGuid().ToString("N");
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite; // never readable by others, not even briefly
        }

        using (var file = new StreamWriter(draft, new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: false), options))
        {
            file.Write(RandomNumberGenerator.GetString("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 32));
        }

        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(draft, UnixFileMode.UserRead);
        }

        try
        {
            File.Move(draft, path, overwrite: false);
        }
        catch (IOException) when (File.Exists(path))
        {
            File.Delete(draft); // another node's callback was first: the same cookie for all
        }
    }
}

/// <summary>The nodes behind a cluster's connection string.</summary>
public sealed record RabbitMqClusterNodesAnnotation(IReadOnlyList<LocalRabbitMQResource> Nodes) : IResourceAnnotation;
