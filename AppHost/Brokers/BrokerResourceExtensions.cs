using Aspire.Hosting.ApplicationModel;
using EventPipeline.AppHost.Brokers;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using RabbitMQ.Client;

namespace Aspire.Hosting;

/// <summary>How the brokers run: as containers when an engine answers, otherwise as Debian's own servers.</summary>
public enum BrokerHosting
{
    Auto,
    Containers,
    Executables,
}

/// <summary>
/// Adds Redis and RabbitMQ either as Aspire's containers or, on a machine without a container engine, as local
/// executables with the same connection-string shape, credentials and protocol-level health checks.
/// </summary>
public static class BrokerResourceExtensions
{
    public const string InstallCommand = "bash eng/install-deps.sh";

    public static BrokerHosting ResolveBrokerHosting(this IDistributedApplicationBuilder builder)
    {
        var mode = builder.Configuration.GetValue("Brokers:Mode", BrokerHosting.Auto);
        if (mode == BrokerHosting.Auto)
        {
            mode = ContainerRuntimeProbe.IsHealthy(TimeSpan.FromSeconds(5)) ? BrokerHosting.Containers : BrokerHosting.Executables;
        }

        if (mode == BrokerHosting.Executables)
        {
            var missing = LocalProcessResources.MissingExecutables("redis-server", "epmd", LocalRabbitMQResource.RabbitMQServerPath);
            if (missing.Count > 0)
            {
                throw new DistributedApplicationException(
                    $"No healthy container runtime was found and these broker executables are missing: {string.Join(", ", missing)}. " +
                    $"Install them once with `{InstallCommand}` (apt-get install redis-server rabbitmq-server prometheus), then run again.");
            }
        }

        return mode;
    }

    /// <summary>
    /// Redis persists the same way in both modes. AOF with an fsync every second is what the durability statement rests
    /// on (a process crash loses nothing acknowledged, an OS crash up to about a second; README, "Durability"). RDB
    /// snapshots are kept on top, not instead: Aspire's container data volume turns them on and its
    /// <c>WithPersistence</c> can only set their interval, never turn them off; Redis's own default (the dev Kubernetes
    /// overlay) snapshots too; and a snapshot is one point-in-time file an operator can copy or restore from when the AOF
    /// is damaged. Redis loads the AOF at startup when both exist, so snapshots never roll anything back.
    /// </summary>
    public static readonly TimeSpan SnapshotInterval = TimeSpan.FromSeconds(60);

    /// <summary>Keys that must have changed for a snapshot to be taken at <see cref="SnapshotInterval"/>.</summary>
    public const long SnapshotKeyChanges = 1;

    /// <param name="configureContainer">
    /// What to add to Aspire's Redis container (e.g. <c>WithRedisInsight</c>); called only in container mode.
    /// </param>
    public static IResourceBuilder<IResourceWithConnectionString> AddPipelineRedis(
        this IDistributedApplicationBuilder builder, string name, BrokerHosting hosting, IResourceBuilder<ParameterResource> password,
        Action<IResourceBuilder<RedisResource>>? configureContainer = null)
    {
        if (hosting == BrokerHosting.Containers)
        {
            var container = builder.AddRedis(name, port: null, password: password)
                .WithDataVolume()
                .WithPersistence(SnapshotInterval, SnapshotKeyChanges)
                .WithArgs("--appendonly", "yes", "--appendfsync", "everysec");
            configureContainer?.Invoke(container);
            return container;
        }

        var dataDirectory = builder.LocalDataDirectory(name);
        var redis = builder.AddResource(new LocalRedisResource(name, dataDirectory, password.Resource))
            .WithLocalPort(LocalRedisResource.PrimaryEndpointName, "tcp")
            .WithArgs(async context =>
            {
                var resource = (LocalRedisResource)context.Resource;
                // The password goes in a file only this user can read, not on the command line where `ps` shows it
                // to everyone on the machine. A config file must be redis-server's first argument.
                context.Args.Add(await WriteRedisAuthFileAsync(resource, context.CancellationToken));
                context.Args.Add("--port");
                context.Args.Add(resource.PrimaryEndpoint.Property(EndpointProperty.TargetPort));
                context.Args.Add("--bind");
                context.Args.Add("127.0.0.1");
                context.Args.Add("--dir");
                context.Args.Add(resource.DataDirectory);
                context.Args.Add("--daemonize");
                context.Args.Add("no");
                context.Args.Add("--appendonly");
                context.Args.Add("yes");
                context.Args.Add("--appendfsync");
                context.Args.Add("everysec");
                context.Args.Add("--save");
                context.Args.Add(SnapshotInterval.TotalSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture));
                context.Args.Add(SnapshotKeyChanges.ToString(System.Globalization.CultureInfo.InvariantCulture));
            });
        return redis.WithRedisHealthCheck();
    }

    private static async Task<string> WriteRedisAuthFileAsync(LocalRedisResource resource, CancellationToken cancellationToken)
    {
        var password = await resource.Password.GetValueAsync(cancellationToken)
            ?? throw new InvalidOperationException($"Parameter '{resource.Password.Name}' has no value");
        Directory.CreateDirectory(resource.DataDirectory);
        var path = Path.Combine(resource.DataDirectory, "auth.conf");
        const UnixFileMode ownerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        var options = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = ownerOnly;
        }

        await using (var file = new StreamWriter(path, new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: false), options))
        {
            await file.WriteLineAsync($"requirepass \"{password.Replace("\\", "\\\\").Replace("\"", "\\\"")}\"");
        }

        if (!OperatingSystem.IsWindows())
        {
            // An existing file keeps its old mode on Create: make sure it is the owner's alone.
            File.SetUnixFileMode(path, ownerOnly);
        }

        return path;
    }

    /// <summary>
    /// The RabbitMQ line of container mode: the 3.x line the dev and prod Kubernetes overlays pin (3.13.7), not Aspire's
    /// default 4.x image. RabbitMQ 4 gives every quorum queue a delivery limit of 20 by default, and the I/O lane's error
    /// queue is declared without <c>x-delivery-limit</c>, so there a dead letter would be dropped after about 20
    /// listings (docs/io-lane.md, "RabbitMQ versions").
    /// </summary>
    public const string RabbitMQImageTag = "3.13.7";

    /// <param name="configureContainer">
    /// What to add to Aspire's RabbitMQ container (e.g. <c>WithManagementPlugin</c>, which keeps the pinned version:
    /// <c>3.13.7-management</c>); called only in container mode. The local executable always runs the management plugin.
    /// </param>
    public static IResourceBuilder<IResourceWithConnectionString> AddPipelineRabbitMQ(
        this IDistributedApplicationBuilder builder, string name, BrokerHosting hosting,
        IResourceBuilder<ParameterResource> userName, IResourceBuilder<ParameterResource> password,
        Action<IResourceBuilder<RabbitMQServerResource>>? configureContainer = null)
    {
        if (hosting == BrokerHosting.Containers)
        {
            var container = builder.AddRabbitMQ(name, userName, password)
                .WithImageTag(RabbitMQImageTag)
                .WithDataVolume()
                .WithUrlForEndpoint("management", url => url.DisplayText = ManagementUiText(userName.Resource.Name, password.Resource.Name));
            configureContainer?.Invoke(container);
            return container;
        }

        var dataDirectory = builder.LocalDataDirectory(name);
        var epmd = builder.AddLocalEpmd($"{name}-epmd", dataDirectory);

        return builder.AddLocalRabbitMQNode(name, dataDirectory, epmd, userName, password, resource =>
        {
            var home = Path.Combine(resource.DataDirectory, "home");
            Directory.CreateDirectory(home);
            var config = Path.Combine(resource.DataDirectory, "rabbitmq.conf");
            File.WriteAllText(config, "loopback_users = none\n");
            return (home, config);
        });
    }

    /// <summary>
    /// The Erlang port mapper a local RabbitMQ node (or every node of a cluster) registers with: on a port of its own, on
    /// loopback, healthy once it accepts TCP connections.
    /// </summary>
    internal static IResourceBuilder<EpmdResource> AddLocalEpmd(this IDistributedApplicationBuilder builder, string name, string directory)
    {
        var epmd = builder.AddResource(new EpmdResource(name, directory))
            .WithLocalPort(EpmdResource.PrimaryEndpointName, "tcp")
            .WithArgs(context =>
            {
                context.Args.Add("-port");
                context.Args.Add(((EpmdResource)context.Resource).PrimaryEndpoint.Property(EndpointProperty.TargetPort));
                context.Args.Add("-address");
                context.Args.Add("127.0.0.1");
            });
        var check = $"{epmd.Resource.Name}_tcp_check";
        builder.Services.AddHealthChecks().Add(new HealthCheckRegistration(
            check, _ => new TcpPortHealthCheck(epmd.Resource.PrimaryEndpoint), failureStatus: null, tags: null));
        return epmd.WithHealthCheck(check);
    }

    /// <summary>
    /// One Debian <c>rabbitmq-server</c> node on loopback — its ports, links, environment and health check — for the
    /// single broker and for every node of a cluster alike. <paramref name="prepare"/> runs when the node's environment
    /// is built: it writes the node's <c>rabbitmq.conf</c> and returns its HOME (where the Erlang cookie lives) and that file.
    /// </summary>
    internal static IResourceBuilder<LocalRabbitMQResource> AddLocalRabbitMQNode(this IDistributedApplicationBuilder builder, string name,
        string dataDirectory, IResourceBuilder<EpmdResource> epmd, IResourceBuilder<ParameterResource> userName,
        IResourceBuilder<ParameterResource> password, Func<LocalRabbitMQResource, (string Home, string ConfigFile)> prepare) =>
        builder.AddResource(new LocalRabbitMQResource(name, dataDirectory, userName.Resource, password.Resource))
            .WithLocalPort(LocalRabbitMQResource.PrimaryEndpointName, "amqp")
            .WithLocalPort(LocalRabbitMQResource.DistributionEndpointName, "tcp")
            .WithLocalPort(LocalRabbitMQResource.PrometheusEndpointName, "http")
            .WithLocalPort(LocalRabbitMQResource.ManagementEndpointName, "http")
            .WithUrlForEndpoint(LocalRabbitMQResource.ManagementEndpointName, url => url.DisplayText = ManagementUiText(userName.Resource.Name, password.Resource.Name))
            // A browser cannot open amqp://: the management UI is the link the resource list shows.
            .WithUrlForEndpoint(LocalRabbitMQResource.PrimaryEndpointName, url => url.DisplayLocation = UrlDisplayLocation.DetailsOnly)
            .WithUrlForEndpoint(LocalRabbitMQResource.PrometheusEndpointName, url => (url.DisplayText, url.DisplayLocation) = ("Prometheus metrics", UrlDisplayLocation.DetailsOnly))
            .WithEnvironment(context =>
            {
                var resource = (LocalRabbitMQResource)context.Resource;
                var (home, configFile) = prepare(resource);
                var env = context.EnvironmentVariables;
                env["HOME"] = home;
                // A stable node name keeps the queues (and a cluster's membership) across runs: RabbitMQ stores them under it.
                env["RABBITMQ_NODENAME"] = $"eventpipeline-{resource.Name}@localhost";
                env["RABBITMQ_NODE_IP_ADDRESS"] = "127.0.0.1";
                env["RABBITMQ_NODE_PORT"] = resource.PrimaryEndpoint.Property(EndpointProperty.TargetPort);
                env["RABBITMQ_DIST_PORT"] = resource.GetEndpoint(LocalRabbitMQResource.DistributionEndpointName).Property(EndpointProperty.TargetPort);
                env["ERL_EPMD_PORT"] = epmd.Resource.PrimaryEndpoint.Property(EndpointProperty.Port);
                env["ERL_EPMD_ADDRESS"] = "127.0.0.1";
                env["RABBITMQ_MNESIA_BASE"] = Path.Combine(resource.DataDirectory, "mnesia");
                env["RABBITMQ_LOG_BASE"] = Path.Combine(resource.DataDirectory, "log");
                env["RABBITMQ_LOGS"] = "-";
                env["RABBITMQ_CONFIG_FILE"] = configFile;
                env["RABBITMQ_ENABLED_PLUGINS_FILE"] = WriteEnabledPlugins(resource.DataDirectory);
                env["RABBITMQ_DEFAULT_USER"] = resource.UserName;
                env["RABBITMQ_DEFAULT_PASS"] = resource.Password;
                // The node registers with the epmd resource and never starts a daemon of its own, which would outlive
                // the AppHost and squat the resource's port. In ERL_FLAGS, not only on the node's command line: every
                // Erlang VM the node starts inherits it, and the node starts one to make sure epmd runs — at boot and
                // every minute after (rabbit_nodes_common:ensure_epmd, rabbit_epmd_monitor). With the epmd resource
                // gone (Aspire stops resources in no order, so at shutdown epmd may go first) that VM started
                // `epmd -daemon` (LocalRabbitMqEpmdTests).
                env["ERL_FLAGS"] = "-start_epmd false";
                env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = ReferenceExpression.Create(
                    $"-kernel inet_dist_use_interface {{127,0,0,1}} -rabbitmq_prometheus tcp_config [{{port,{resource.PrometheusEndpoint.Property(EndpointProperty.TargetPort)}}},{{ip,\"127.0.0.1\"}}] "
                    + $"-rabbitmq_management tcp_config [{{port,{resource.ManagementEndpoint.Property(EndpointProperty.TargetPort)}}},{{ip,\"127.0.0.1\"}}]");
            })
            .WaitFor(epmd)
            .WithRabbitMQHealthCheck();

    /// <summary>
    /// Healthy when Redis answers PING with the resource's password: the check Aspire's own <c>AddRedis</c> registers for
    /// its container (AspNetCore.HealthChecks.Redis), for a Redis that is not Aspire's container.
    /// </summary>
    internal static IResourceBuilder<T> WithRedisHealthCheck<T>(this IResourceBuilder<T> builder) where T : IResourceWithConnectionString
    {
        var key = $"{builder.Resource.Name}_check";
        var connectionString = builder.ConnectionStringWhenAvailable();
        builder.ApplicationBuilder.Services.AddHealthChecks().AddRedis(
            _ => connectionString() ?? throw new InvalidOperationException($"The connection string of '{builder.Resource.Name}' is not available yet"),
            name: key, timeout: HealthCheckTimeout);
        return builder.WithHealthCheck(key);
    }

    /// <summary>
    /// Healthy when an AMQP connection with the resource's credentials can open a channel: the check Aspire's own
    /// <c>AddRabbitMQ</c> registers for its container (AspNetCore.HealthChecks.Rabbitmq). The connection is opened once
    /// and kept; the client's automatic recovery reconnects it after a restart, and until then the check fails.
    /// </summary>
    internal static IResourceBuilder<T> WithRabbitMQHealthCheck<T>(this IResourceBuilder<T> builder) where T : IResourceWithConnectionString
    {
        var key = $"{builder.Resource.Name}_check";
        var connectionString = builder.ConnectionStringWhenAvailable();
        IConnection? connection = null;
        builder.ApplicationBuilder.Services.AddHealthChecks().AddRabbitMQ(async _ =>
        {
            var factory = new ConnectionFactory
            {
                Uri = new Uri(connectionString() ?? throw new InvalidOperationException($"The connection string of '{builder.Resource.Name}' is not available yet")),
                RequestedConnectionTimeout = HealthCheckTimeout,
            };
            return connection ??= await factory.CreateConnectionAsync();
        }, name: key, timeout: HealthCheckTimeout);
        return builder.WithHealthCheck(key);
    }

    private static readonly TimeSpan HealthCheckTimeout = TimeSpan.FromSeconds(5);

    /// <summary>The resource's connection string once Aspire has it (its endpoints are allocated), as Aspire's own integrations read it.</summary>
    private static Func<string?> ConnectionStringWhenAvailable<T>(this IResourceBuilder<T> builder) where T : IResourceWithConnectionString
    {
        string? connectionString = null;
        builder.ApplicationBuilder.Eventing.Subscribe<ConnectionStringAvailableEvent>(builder.Resource, async (_, cancellationToken) =>
            connectionString = await builder.Resource.GetConnectionStringAsync(cancellationToken));
        return () => connectionString;
    }

    /// <summary>The management UI's link: it logs in with the broker's own user, whose name and password are AppHost parameters.</summary>
    private static string ManagementUiText(string userParameter, string passwordParameter) =>
        $"RabbitMQ management (log in with parameters {userParameter} / {passwordParameter})";

    private static string WriteEnabledPlugins(string dataDirectory)
    {
        var plugins = Path.Combine(dataDirectory, "enabled_plugins");
        File.WriteAllText(plugins, "[rabbitmq_prometheus,rabbitmq_management].\n");
        return plugins;
    }
}
