using EventPipeline.Infra.Tests.Support;

namespace EventPipeline.Infra.Tests;

/// <summary>
/// Production's Redis is a managed service with a replica and automatic failover (docs/ha.md): the API must not
/// answer 202 for a CPU-lane event until a replica holds it too, or a failover can lose accepted events.
/// </summary>
public class RedisFailoverSettingsTests
{
    [Fact]
    public void Prod_api_answers_202_for_a_cpu_event_only_after_one_redis_replica_holds_it()
    {
        var prod = Manifests.Render("overlays/prod");
        var api = prod.Workload("producer-api");
        var env = prod.EnvironmentOf(api, api.MainContainer);
        Assert.Equal("1", env.GetValueOrDefault("Ingest__RedisReplicaAcks"));
    }

    [Fact]
    public void Dev_api_trusts_its_single_redis_alone_as_a_replica_ack_would_never_come()
    {
        var dev = Manifests.Render("overlays/dev");
        var api = dev.Workload("producer-api");
        Assert.Equal(1, (long?)dev.Workload("redis").Object["spec"]!["replicas"] ?? 1);
        Assert.Equal("0", dev.EnvironmentOf(api, api.MainContainer).GetValueOrDefault("Ingest__RedisReplicaAcks", "0"));
    }
}
