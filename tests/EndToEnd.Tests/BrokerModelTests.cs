using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Aspire.Hosting.Redis;
using Aspire.Hosting.Testing;
using EventPipeline.Testing;
using Microsoft.Extensions.DependencyInjection;
using Xunit.Abstractions;

namespace EventPipeline.EndToEnd.Tests;

/// <summary>
/// The brokers as the AppHost models them, read without starting anything (container mode cannot run here: no container
/// engine). Both modes persist alike (AOF everysec plus the same RDB snapshots), container mode runs the RabbitMQ line
/// the Kubernetes overlays pin with its management plugin, adds RedisInsight, and every broker has its health check.
/// </summary>
public sealed class BrokerModelTests(ITestOutputHelper output) : IDisposable
{
    private readonly ScratchDirectory _data = new("ep-model");

    public void Dispose() => _data.Dispose();

    private async Task<DistributedApplication> BuildAsync(string mode)
    {
        List<string> args = [.. AppHostArguments.ForTest(_data.Path, "submit-" + Guid.NewGuid().ToString("N"), "admin-" + Guid.NewGuid().ToString("N"), "model")];
        args.Remove("Brokers:Mode=Executables");
        args.Add($"Brokers:Mode={mode}");
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.AppHost>([.. args]);
        return await builder.BuildNeverStartedAsync();
    }

    /// <summary>The arguments the resource would be started with in run mode, evaluated as Aspire evaluates them.</summary>
    private async Task<string[]> RunArgumentsAsync(DistributedApplication app, IResource resource)
    {
        var context = app.Services.GetRequiredService<DistributedApplicationExecutionContext>();
        var configuration = await ExecutionConfigurationBuilder.Create(resource).WithArgumentsConfig().BuildAsync(context);
        string[] args = [.. configuration.Arguments.Select(a => a.Value)];
        output.WriteLine($"{resource.Name}: {string.Join(' ', args)}");
        return args;
    }

    private static T Resource<T>(DistributedApplication app, string name) where T : IResource =>
        app.Services.GetRequiredService<DistributedApplicationModel>().Resources.OfType<T>().Single(r => r.Name == name);

    private static void AssertSequence(string[] args, params string[] expected)
    {
        var found = Enumerable.Range(0, args.Length - expected.Length + 1).Any(i => args.Skip(i).Take(expected.Length).SequenceEqual(expected));
        Assert.True(found, $"[{string.Join(' ', expected)}] is not in the arguments: [{string.Join(' ', args)}]");
    }

    [Fact]
    public async Task Container_mode_redis_persists_with_aof_everysec_and_the_shared_snapshot_policy_and_has_redisinsight()
    {
        await using var app = await BuildAsync("Containers");
        var redis = Resource<RedisResource>(app, "redis");

        var args = await RunArgumentsAsync(app, redis);
        AssertSequence(args, "--appendonly", "yes");
        AssertSequence(args, "--appendfsync", "everysec");
        AssertSequence(args, "--save", "60", "1");
        Assert.Contains(redis.Annotations.OfType<ContainerMountAnnotation>(), m => m.Target == "/data" && !m.IsReadOnly);
        Assert.Contains(redis.Annotations.OfType<HealthCheckAnnotation>(), h => h.Key == "redis_check");
        Assert.Single(app.Services.GetRequiredService<DistributedApplicationModel>().Resources.OfType<RedisInsightResource>());
    }

    [Fact]
    public async Task Executable_mode_redis_persists_exactly_like_container_mode()
    {
        await using var app = await BuildAsync("Executables");
        var redis = Resource<LocalRedisResource>(app, "redis");

        var args = await RunArgumentsAsync(app, redis);
        AssertSequence(args, "--appendonly", "yes");
        AssertSequence(args, "--appendfsync", "everysec");
        AssertSequence(args, "--save", "60", "1");
        Assert.Equal(1, args.Count(a => a == "--save"));
        Assert.Contains(redis.Annotations.OfType<HealthCheckAnnotation>(), h => h.Key == "redis_check");
    }

    [Fact]
    public async Task Container_mode_rabbitmq_runs_the_3_13_line_the_overlays_pin_with_its_management_plugin()
    {
        await using var app = await BuildAsync("Containers");
        var rabbit = Resource<RabbitMQServerResource>(app, "rabbitmq");

        var image = Assert.Single(rabbit.Annotations.OfType<ContainerImageAnnotation>());
        Assert.Equal("library/rabbitmq", image.Image);
        // The prod overlay's RabbitmqCluster runs rabbitmq:3.13.7-management; RabbitMQ 4 would cap the error queue's deliveries at 20.
        Assert.Equal("3.13.7-management", image.Tag);
        Assert.Contains(rabbit.Annotations.OfType<EndpointAnnotation>(), e => e.Name == "management" && e.TargetPort == 15672);
        Assert.Contains(rabbit.Annotations.OfType<ContainerMountAnnotation>(), m => m.Target == "/var/lib/rabbitmq");
        Assert.Contains(rabbit.Annotations.OfType<HealthCheckAnnotation>(), h => h.Key == "rabbitmq_check");
    }

    [Fact]
    public async Task Executable_mode_rabbitmq_has_the_library_health_check()
    {
        await using var app = await BuildAsync("Executables");
        var rabbit = Resource<LocalRabbitMQResource>(app, "rabbitmq");

        Assert.Contains(rabbit.Annotations.OfType<HealthCheckAnnotation>(), h => h.Key == "rabbitmq_check");
    }
}
