using EventPipeline.Shared;
using RabbitMQ.Client;

namespace EventPipeline.Producer.UnitTests;

/// <summary>A connection string names one RabbitMQ node as before, or every node of a cluster; both keep the credentials.</summary>
public sealed class RabbitMqNodesTests
{
    [Fact]
    public void Cluster_connection_string_names_every_node_with_the_same_credentials_and_vhost()
    {
        var nodes = RabbitMqNodes.Parse("amqp://ep:s3cret@127.0.0.1:5701,127.0.0.1:5702, rabbit-2:5703/orders");

        Assert.True(nodes.IsCluster);
        Assert.Equal(["127.0.0.1:5701", "127.0.0.1:5702", "rabbit-2:5703"], nodes.Endpoints.Select(e => $"{e.HostName}:{e.Port}"));
        var factory = new ConnectionFactory();
        nodes.ApplyTo(factory);
        Assert.Equal(("ep", "s3cret", "orders", "127.0.0.1", 5701), (factory.UserName, factory.Password, factory.VirtualHost, factory.HostName, factory.Port));
        Assert.Equal(3, factory.EndpointResolverFactory(factory.Endpoint is { } e ? [e] : []).All().Count());
    }

    [Fact]
    public void Single_node_connection_string_is_the_plain_uri()
    {
        const string single = "amqp://ep:s3cret@127.0.0.1:5701";
        var nodes = RabbitMqNodes.Parse(single);

        Assert.False(nodes.IsCluster);
        Assert.Equal(new Uri(single), nodes.FirstNode);
        var factory = new ConnectionFactory();
        nodes.ApplyTo(factory);
        Assert.Equal(["127.0.0.1:5701"], factory.EndpointResolverFactory([factory.Endpoint]).All().Select(e => $"{e.HostName}:{e.Port}"));
    }

    [Fact]
    public void Node_without_a_port_gets_the_scheme_default()
    {
        var nodes = RabbitMqNodes.Parse("amqps://ep:pw@a.example,b.example:5999/");

        Assert.Equal([5671, 5999], nodes.Endpoints.Select(e => e.Port));
        Assert.All(nodes.Endpoints, e => Assert.True(e.Ssl.Enabled));
    }
}
