using Microsoft.Extensions.Configuration;

namespace Aspire.Hosting;

/// <summary>How many nodes each broker runs: one (the default), or a cluster that survives the death of any one node.</summary>
public enum BrokerTopology { Single, Cluster }

public static class BrokerTopologyExtensions
{
    /// <summary><c>Brokers:Topology</c>: <c>Single</c> (default) or <c>Cluster</c>.</summary>
    public static BrokerTopology ResolveBrokerTopology(this IDistributedApplicationBuilder builder) => builder.Configuration.GetValue("Brokers:Topology", BrokerTopology.Single);
}
