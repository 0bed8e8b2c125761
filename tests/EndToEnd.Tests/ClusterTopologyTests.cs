using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Aspire.Hosting;
using Aspire.Hosting.Testing;
using EventPipeline.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace EventPipeline.EndToEnd.Tests;

/// <summary>
/// <c>Brokers:Topology=Cluster</c> from the real AppHost: three RabbitMQ nodes that form one cluster, services that are
/// given every node, and the I/O lane's quorum queue spread over all three.
/// </summary>
[Collection(ClusterAppHostCollection.Name)]
public sealed class ClusterTopologyTests(ClusterAppHostFixture fixture)
{
    [Fact]
    public async Task Cluster_topology_runs_three_joined_nodes_and_the_io_lane_spans_them()
    {
        var connectionString = (await fixture.App.GetConnectionStringAsync("rabbitmq"))!;
        var nodes = connectionString[(connectionString.LastIndexOf('@') + 1)..].Split(',');
        Assert.Equal(3, nodes.Length);

        // An I/O event goes through the cluster to the receiver.
        using var submitted = await fixture.Api.PostAsJsonAsync("/events", new { type = "webhook.post", payload = new { order = 7 } });
        Assert.Equal(System.Net.HttpStatusCode.Accepted, submitted.StatusCode);
        var id = (await submitted.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("id").GetString();
        await Eventually.TrueAsync(async () =>
            (await fixture.Api.GetFromJsonAsync<JsonElement>($"/events/{id}")).GetProperty("state").GetString() == "succeeded",
            TimeSpan.FromSeconds(60), $"event {id} to succeed");

        // Asked through rabbitmq-0's management API: three running members, and the lane queue on all three.
        using var management = new HttpClient { BaseAddress = fixture.App.GetEndpoint("rabbitmq-0", "management") };
        management.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic",
            Convert.ToBase64String(Encoding.UTF8.GetBytes($"eventpipeline:{fixture.RabbitPassword}")));
        var running = (await management.GetFromJsonAsync<JsonElement>("/api/nodes?columns=name,running")).EnumerateArray()
            .Where(n => n.GetProperty("running").GetBoolean()).Select(n => n.GetProperty("name").GetString()).ToList();
        Assert.Equal(["eventpipeline-rabbitmq-0@localhost", "eventpipeline-rabbitmq-1@localhost", "eventpipeline-rabbitmq-2@localhost"], running.Order());
        var queue = await management.GetFromJsonAsync<JsonElement>("/api/queues/%2F/events-io");
        Assert.Equal(running, queue.GetProperty("members").EnumerateArray().Select(m => m.GetString()).Order());
    }
}

/// <summary>The AppHost with <c>Brokers:Topology=Cluster</c>, brokers as local executables in a temp directory.</summary>
public sealed class ClusterAppHostFixture : IAsyncLifetime
{
    private readonly ScratchDirectory _data = new("ep-e2e-cluster");
    private DistributedApplication? _app;

    public DistributedApplication App => _app ?? throw new InvalidOperationException("not started");

    public HttpClient Api { get; private set; } = null!;

    public string RabbitPassword { get; private set; } = "";

    public async Task InitializeAsync()
    {
        var submitKey = "submit-" + Guid.NewGuid().ToString("N");
        var arguments = AppHostArguments.ForTest(_data.Path, submitKey, "admin-" + Guid.NewGuid().ToString("N"), "e2e-cluster");
        arguments.Add("Brokers:Topology=Cluster");
        RabbitPassword = arguments.Single(a => a.StartsWith("Parameters:rabbitmq-password=", StringComparison.Ordinal)).Split('=', 2)[1];
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.AppHost>([.. arguments]);
        builder.Services.AddLogging(logging => logging
            .SetMinimumLevel(LogLevel.Warning)
            .AddFilter("Microsoft.Extensions.Diagnostics.HealthChecks", LogLevel.None));

        _app = await builder.BuildAsync();
        using var startup = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        await _app.StartAsync(startup.Token);
        foreach (var resource in new[] { "rabbitmq-0", "rabbitmq-1", "rabbitmq-2", "rabbitmq", "producer-api", "worker-io" })
        {
            await _app.ResourceNotifications.WaitForResourceHealthyAsync(resource, startup.Token);
        }

        Api = _app.CreateHttpClient("producer-api");
        Api.DefaultRequestHeaders.Add("X-Api-Key", submitKey);
    }

    public async Task DisposeAsync()
    {
        Api?.Dispose();
        if (_app is not null)
        {
            await _app.StopAsync();
            await _app.DisposeAsync();
        }

        _data.Dispose();
    }
}

/// <summary>Runs alone, never beside the other AppHost collection: two whole systems at once would starve 2 cores.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ClusterAppHostCollection : ICollectionFixture<ClusterAppHostFixture>
{
    public const string Name = "Running AppHost, RabbitMQ cluster";
}
