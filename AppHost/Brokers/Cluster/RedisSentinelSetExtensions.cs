using System.Net;
using Aspire.Hosting.ApplicationModel;
using EventPipeline.AppHost.Brokers;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using StackExchange.Redis;

namespace Aspire.Hosting;

/// <summary>
/// <c>Brokers:Topology=Cluster</c>'s Redis: one primary and two replicas (<c>redis-0</c>..<c>redis-2</c>, Debian's
/// <c>redis-server</c>, AOF everysec, one password for clients and replication) and three Sentinels
/// (<c>redis-sentinel-0</c>..<c>2</c>, <c>redis-server --sentinel</c>, quorum 2) as local executables on loopback, and
/// one connection-string resource <c>redis</c> that names the Sentinels and the service name, so StackExchange.Redis
/// asks them for the primary and follows a failover. Any one node or Sentinel can die and the lane keeps working.
/// </summary>
public static class RedisSentinelSetExtensions
{
    /// <summary>The name the Sentinels monitor the set under (<c>serviceName=</c> in the connection string).</summary>
    public const string ServiceName = "eventpipeline";

    private const int Nodes = 3;
    private const int Sentinels = 3;

    public static IResourceBuilder<IResourceWithConnectionString> AddPipelineRedisSentinelSet(
        this IDistributedApplicationBuilder builder, string name, BrokerHosting hosting, IResourceBuilder<ParameterResource> password)
    {
        if (hosting != BrokerHosting.Executables)
        {
            // The members talk to each other and to the services on 127.0.0.1, which a container's loopback is not.
            throw new DistributedApplicationException("Brokers:Topology=Cluster runs Redis as local processes: add Brokers:Mode=Executables");
        }

        var missing = LocalProcessResources.MissingExecutables("redis-server");
        if (missing.Count > 0)
        {
            throw new DistributedApplicationException(
                "Brokers:Topology=Cluster runs Redis as local processes and needs redis-server (apt-get install redis-server)");
        }

        var nodePorts = Enumerable.Range(0, Nodes).Select(_ => LocalProcessResources.FreeLoopbackPort()).ToArray();
        var sentinelPorts = Enumerable.Range(0, Sentinels).Select(_ => LocalProcessResources.FreeLoopbackPort()).ToArray();
        var set = new SentinelSet(nodePorts, sentinelPorts, password.Resource);

        var nodes = new List<IResourceBuilder<LocalRedisResource>>();
        for (var i = 0; i < Nodes; i++)
        {
            var port = nodePorts[i];
            var node = builder.AddResource(new LocalRedisResource($"{name}-{i}", builder.LocalDataDirectory($"{name}-{i}"), password.Resource))
                .WithEndpoint(port: port, targetPort: port, scheme: "tcp", name: LocalRedisResource.PrimaryEndpointName, isProxied: false)
                .WithArgs(async context =>
                {
                    var resource = (LocalRedisResource)context.Resource;
                    context.Args.Add(await WriteOwnerOnlyFileAsync(Path.Combine(resource.DataDirectory, "auth.conf"),
                        $"requirepass {Quote(await set.PasswordAsync(context.CancellationToken))}\nmasterauth {Quote(await set.PasswordAsync(context.CancellationToken))}\n",
                        context.CancellationToken));
                    foreach (var argument in new[] { "--port", port.ToString(), "--bind", "127.0.0.1", "--dir", resource.DataDirectory,
                        "--daemonize", "no", "--appendonly", "yes", "--appendfsync", "everysec", "--save", "" })
                    {
                        context.Args.Add(argument);
                    }

                    // A node (re)started while the Sentinels know a primary joins it as a replica, so a returning old
                    // primary never takes writes; on the first start redis-0 is the primary.
                    var primary = await set.PrimaryPortAsync(context.CancellationToken) ?? nodePorts[0];
                    if (primary != port)
                    {
                        context.Args.Add("--replicaof");
                        context.Args.Add("127.0.0.1");
                        context.Args.Add(primary.ToString());
                    }
                });
            node.WithRedisHealthCheck();
            nodes.Add(node);
        }

        for (var i = 1; i < Nodes; i++)
        {
            nodes[i].WaitFor(nodes[0]);
        }

        var sentinels = new List<IResourceBuilder<LocalRedisSentinelResource>>();
        for (var i = 0; i < Sentinels; i++)
        {
            var port = sentinelPorts[i];
            var sentinel = builder.AddResource(new LocalRedisSentinelResource($"{name}-sentinel-{i}", builder.LocalDataDirectory($"{name}-sentinel-{i}")))
                .WithEndpoint(port: port, targetPort: port, scheme: "tcp", name: LocalRedisSentinelResource.PrimaryEndpointName, isProxied: false)
                .WithArgs(async context =>
                {
                    var resource = (LocalRedisSentinelResource)context.Resource;
                    var secret = Quote(await set.PasswordAsync(context.CancellationToken));
                    var primary = await set.PrimaryPortAsync(context.CancellationToken) ?? nodePorts[0];
                    // Written fresh on every start (ports change between runs); Sentinel rewrites it with what it learns.
                    context.Args.Add(await WriteOwnerOnlyFileAsync(Path.Combine(resource.WorkingDirectory, "sentinel.conf"), $"""
                        port {port}
                        bind 127.0.0.1
                        daemonize no
                        dir {resource.WorkingDirectory}
                        requirepass {secret}
                        sentinel announce-ip 127.0.0.1
                        sentinel monitor {ServiceName} 127.0.0.1 {primary} 2
                        sentinel auth-pass {ServiceName} {secret}
                        sentinel down-after-milliseconds {ServiceName} 3000
                        sentinel failover-timeout {ServiceName} 10000
                        sentinel parallel-syncs {ServiceName} 1

                        """, context.CancellationToken));
                    context.Args.Add("--sentinel");
                });
            sentinel.WithHealthCheck(AddCheck(builder, $"{sentinel.Resource.Name}_tcp_check", new TcpPortHealthCheck(sentinel.Resource.PrimaryEndpoint)));
            foreach (var node in nodes)
            {
                sentinel.WaitFor(node);
            }

            sentinels.Add(sentinel);
        }

        var hosts = sentinels.Select(s => s.Resource.PrimaryEndpoint.Property(EndpointProperty.HostAndPort)).ToArray();
        var expression = new ReferenceExpressionBuilder();
        for (var i = 0; i < hosts.Length; i++)
        {
            expression.Append($"{hosts[i]},");
        }

        expression.Append($"serviceName={ServiceName},password={password.Resource}");
        var connection = builder.AddConnectionString(name, expression.Build());
        foreach (var member in nodes.Select(n => (IResourceBuilder<IResource>)n).Concat(sentinels.Select(s => (IResourceBuilder<IResource>)s)))
        {
            member.WithParentRelationship(connection);
        }

        foreach (var sentinel in sentinels)
        {
            connection.WaitFor(sentinel);
        }

        // Healthy when a client that goes through the Sentinels reaches the primary and it answers PING.
        connection.WithRedisHealthCheck();
        return connection;
    }

    /// <summary>The node a Redis exporter should scrape: the resource itself for one Redis, <c>redis-0</c> for a Sentinel set.</summary>
    public static IResourceBuilder<IResourceWithConnectionString> MonitoredRedisNode(this IResourceBuilder<IResourceWithConnectionString> redis) =>
        redis.Resource is ConnectionStringResource
            ? redis.ApplicationBuilder.CreateResourceBuilder((IResourceWithConnectionString)redis.ApplicationBuilder.Resources.Single(r => r.Name == $"{redis.Resource.Name}-0"))
            : redis;

    private static string AddCheck(IDistributedApplicationBuilder builder, string key, IHealthCheck check)
    {
        builder.Services.AddHealthChecks().Add(new HealthCheckRegistration(key, _ => check, failureStatus: null, tags: null));
        return key;
    }

    private static string Quote(string value) => $"\"{value.Replace("\\", "\\\\").Replace("\"", "\\\"")}\"";

    /// <summary>Passwords go in files only this user can read, not on command lines `ps` shows to everyone.</summary>
    private static async Task<string> WriteOwnerOnlyFileAsync(string path, string content, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        const UnixFileMode ownerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        var options = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = ownerOnly;
        }

        await using (var file = new StreamWriter(path, new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: false), options))
        {
            await file.WriteAsync(content);
        }

        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(path, ownerOnly);
        }

        return path;
    }

    /// <summary>What a (re)starting member needs to know: the password and which node the Sentinels call primary now.</summary>
    private sealed class SentinelSet(int[] nodePorts, int[] sentinelPorts, ParameterResource password)
    {
        public async Task<string> PasswordAsync(CancellationToken cancellationToken) =>
            await password.GetValueAsync(cancellationToken) ?? throw new InvalidOperationException($"Parameter '{password.Name}' has no value");

        /// <summary>The primary's port as the first Sentinel that answers names it; null when none runs yet (first start).</summary>
        public async Task<int?> PrimaryPortAsync(CancellationToken cancellationToken)
        {
            foreach (var port in sentinelPorts)
            {
                try
                {
                    var options = new ConfigurationOptions
                    {
                        EndPoints = { new IPEndPoint(IPAddress.Loopback, port) },
                        Password = await PasswordAsync(cancellationToken),
                        AbortOnConnectFail = true,
                        ConnectTimeout = 1000,
                    };
                    await using var sentinel = await ConnectionMultiplexer.SentinelConnectAsync(options);
                    if (await sentinel.GetServer(IPAddress.Loopback, port).SentinelGetMasterAddressByNameAsync(ServiceName) is IPEndPoint primary
                        && nodePorts.Contains(primary.Port))
                    {
                        return primary.Port;
                    }
                }
                catch (RedisException)
                {
                }
            }

            return null;
        }
    }
}
