using EventPipeline.Infra.Tests.Support;

namespace EventPipeline.Infra.Tests;

/// <summary>
/// The prod RabbitMQ settings that the I/O lane's failover promise rests on (tested with real processes in
/// Worker.Io.FunctionalTests/RabbitMqClusterFailoverTests): three nodes on three hosts, a minority that pauses instead
/// of accepting writes on its own, and no voluntary disruption that takes more than one node at a time.
/// </summary>
public class RabbitMqClusterHaTests
{
    private static Rendered Prod => Manifests.Render("overlays/prod");

    [Fact]
    public void Prod_rabbitmq_cluster_keeps_a_majority_through_the_loss_of_one_node()
    {
        var prod = Prod;
        var cluster = prod.Get("RabbitmqCluster", "rabbitmq");
        var spec = cluster["spec"]!;
        Assert.Equal(3, (long)spec["replicas"]!);

        // A partitioned minority stops serving instead of taking writes the majority never sees.
        var config = ((string?)spec["rabbitmq"]?["additionalConfig"] ?? "").Split('\n').Select(l => l.Trim());
        Assert.Contains("cluster_partition_handling = pause_minority", config);

        // One node per host: a host's death takes one member of each quorum queue, never two.
        var antiAffinity = spec["affinity"]!["podAntiAffinity"]!["requiredDuringSchedulingIgnoredDuringExecution"]!.AsArray();
        Assert.Contains(antiAffinity, term => (string?)term!["topologyKey"] == "kubernetes.io/hostname"
            && Rendered.StringMap(term["labelSelector"]!["matchLabels"]).GetValueOrDefault("app.kubernetes.io/name") == "rabbitmq");

        // A drain takes at most one node at a time.
        var budget = prod.Get("PodDisruptionBudget", "rabbitmq")["spec"]!;
        Assert.Equal(1, (long)budget["maxUnavailable"]!);
        Assert.Equal("rabbitmq", Rendered.StringMap(budget["selector"]!["matchLabels"])["app.kubernetes.io/name"]);
    }
}
