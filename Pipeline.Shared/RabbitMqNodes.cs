using MassTransit;
using RabbitMQ.Client;

namespace EventPipeline.Shared;

/// <summary>
/// A RabbitMQ connection string that names one node (<c>amqp://user:pass@host:port/vhost</c>, as always) or every
/// node of a cluster (<c>amqp://user:pass@host1:port1,host2:port2,host3:port3/vhost</c>). A client connects to any
/// node that answers and, when that node dies, reconnects to another: the cluster is one broker with several doors.
/// One node gives exactly the connection a plain URI gives.
/// </summary>
public sealed class RabbitMqNodes
{
    private RabbitMqNodes(Uri firstNode, IReadOnlyList<AmqpTcpEndpoint> endpoints)
    {
        FirstNode = firstNode;
        Endpoints = endpoints;
    }

    /// <summary>The URI with only the first node: user, password, virtual host and TLS come from it.</summary>
    public Uri FirstNode { get; }

    /// <summary>Every node, in the order given.</summary>
    public IReadOnlyList<AmqpTcpEndpoint> Endpoints { get; }

    public bool IsCluster => Endpoints.Count > 1;

    public static RabbitMqNodes Parse(string connectionString)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(connectionString);
        // A URI's authority holds one host: the node list is cut out, and each node parsed as a URI of its own.
        var schemeEnd = connectionString.IndexOf("://", StringComparison.Ordinal);
        if (schemeEnd < 0)
        {
            throw new FormatException("A RabbitMQ connection string is an amqp:// or amqps:// URI");
        }

        var authorityStart = schemeEnd + 3;
        var pathStart = connectionString.IndexOfAny(['/', '?'], authorityStart);
        var authorityEnd = pathStart < 0 ? connectionString.Length : pathStart;
        var userInfoEnd = connectionString.LastIndexOf('@', authorityEnd - 1, authorityEnd - authorityStart);
        var hostsStart = userInfoEnd < 0 ? authorityStart : userInfoEnd + 1;
        var hosts = connectionString[hostsStart..authorityEnd];
        var nodes = hosts.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (nodes.Length == 0)
        {
            throw new FormatException("The RabbitMQ connection string names no host");
        }

        var firstNode = new Uri(connectionString[..hostsStart] + nodes[0] + connectionString[authorityEnd..]);
        // Every node gets the URI's TLS settings; one without a port gets the scheme's (5672, or 5671 for amqps).
        var tls = new ConnectionFactory { Uri = firstNode }.Ssl;
        var endpoints = nodes.Select(node => new Uri(connectionString[..authorityStart] + node))
            .Select(node => new AmqpTcpEndpoint(node.Host, node.Port, tls))
            .ToList();
        return new RabbitMqNodes(firstNode, endpoints);
    }

    /// <summary>
    /// MassTransit's host: the first node's URI, and with several nodes a cluster that MassTransit cycles through
    /// when a connection fails (a node that died is skipped on the next connect).
    /// </summary>
    public void ConfigureHost(IRabbitMqBusFactoryConfigurator bus, Action<IRabbitMqHostConfigurator>? configure = null) =>
        bus.Host(FirstNode, host =>
        {
            configure?.Invoke(host);
            if (IsCluster)
            {
                host.UseCluster(cluster =>
                {
                    foreach (var node in Endpoints)
                    {
                        cluster.Node($"{node.HostName}:{node.Port}");
                    }
                });
            }
        });

    /// <summary>
    /// Points a RabbitMQ.Client factory at every node: its URI at the first, and the endpoints it tries (shuffled
    /// by the client's default resolver, then in turn until one answers) at all of them.
    /// </summary>
    public void ApplyTo(ConnectionFactory factory)
    {
        factory.Uri = FirstNode;
        if (IsCluster)
        {
            var endpoints = Endpoints;
            factory.EndpointResolverFactory = _ => new DefaultEndpointResolver(endpoints);
        }
    }
}
