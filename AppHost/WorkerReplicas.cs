using Microsoft.Extensions.Configuration;

namespace Aspire.Hosting;

/// <summary>
/// How many processes of each worker the AppHost runs (<c>Workers:CpuReplicas</c>, <c>Workers:IoReplicas</c>; 1 by
/// default, 3 and 2 with <c>Brokers:Topology=Cluster</c>), through Aspire's <c>WithReplicas</c>. The lanes need no
/// coordination for it: Worker.Cpu's replicas are consumers of one Redis consumer group (each named after its own
/// process), Worker.Io's are competing consumers of one quorum queue, so a killed replica's work goes to the others.
/// Replicas share the resource's name; each is an instance (<c>worker-cpu-xxxxxxxx</c>) in the dashboard, with its
/// own process, port and restart-on-crash back-off.
/// </summary>
public static class WorkerReplicas
{
    public const string CpuSetting = "Workers:CpuReplicas";
    public const string IoSetting = "Workers:IoReplicas";

    /// <summary>The replica count the setting asks for, or <paramref name="defaultCount"/>; at least 1.</summary>
    public static int WorkerReplicaCount(this IDistributedApplicationBuilder builder, string setting, int defaultCount)
    {
        var count = builder.Configuration.GetValue(setting, defaultCount);
        if (count < 1)
        {
            throw new DistributedApplicationException($"{setting} must be at least 1 (it is {count}).");
        }

        return count;
    }
}
