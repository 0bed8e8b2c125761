using Microsoft.Extensions.Configuration;

namespace Aspire.Hosting;

public enum BrokerTopology { Single, Cluster }

public static class BrokerTopologyExtensions
{
    public static BrokerTopology ResolveBrokerTopology(this IDistributedApplicationBuilder builder) => builder.Configuration.GetValue("Brokers:Topology", BrokerTopology.Single);
}
