using Aspire.Hosting.ApplicationModel;
using EventPipeline.AppHost.Brokers;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;

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

    public static IResourceBuilder<IResourceWithConnectionString> AddPipelineRedis(
        this IDistributedApplicationBuilder builder, string name, BrokerHosting hosting, IResourceBuilder<ParameterResource> password)
    {
        if (hosting == BrokerHosting.Containers)
        {
            return builder.AddRedis(name, port: null, password: password)
                .WithDataVolume()
                .WithArgs("--appendonly", "yes", "--appendfsync", "everysec");
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
                context.Args.Add("");
            });
        return redis.WithProtocolHealthCheck(resource => new RedisPingHealthCheck(resource));
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

    public static IResourceBuilder<IResourceWithConnectionString> AddPipelineRabbitMQ(
        this IDistributedApplicationBuilder builder, string name, BrokerHosting hosting,
        IResourceBuilder<ParameterResource> userName, IResourceBuilder<ParameterResource> password)
    {
        if (hosting == BrokerHosting.Containers)
        {
            return builder.AddRabbitMQ(name, userName, password).WithDataVolume()
                .WithManagementPlugin()
                .WithUrlForEndpoint("management", url => url.DisplayText = ManagementUiText(userName.Resource.Name, password.Resource.Name));
        }

        var dataDirectory = builder.LocalDataDirectory(name);
        var epmd = builder.AddResource(new EpmdResource($"{name}-epmd", dataDirectory))
            .WithLocalPort(EpmdResource.PrimaryEndpointName, "tcp")
            .WithArgs(context =>
            {
                context.Args.Add("-port");
                context.Args.Add(((EpmdResource)context.Resource).PrimaryEndpoint.Property(EndpointProperty.TargetPort));
                context.Args.Add("-address");
                context.Args.Add("127.0.0.1");
            });
        var epmdCheck = $"{epmd.Resource.Name}_tcp_check";
        builder.Services.AddHealthChecks().Add(new HealthCheckRegistration(
            epmdCheck, _ => new TcpPortHealthCheck(epmd.Resource.PrimaryEndpoint), failureStatus: null, tags: null));
        epmd.WithHealthCheck(epmdCheck);

        var rabbit = builder.AddResource(new LocalRabbitMQResource(name, dataDirectory, userName.Resource, password.Resource))
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
                var home = Path.Combine(resource.DataDirectory, "home");
                Directory.CreateDirectory(home);
                var env = context.EnvironmentVariables;
                env["HOME"] = home;
                // A stable node name keeps the queues across runs: RabbitMQ stores them under the node's name.
                env["RABBITMQ_NODENAME"] = $"eventpipeline-{resource.Name}@localhost";
                env["RABBITMQ_NODE_IP_ADDRESS"] = "127.0.0.1";
                env["RABBITMQ_NODE_PORT"] = resource.PrimaryEndpoint.Property(EndpointProperty.TargetPort);
                env["RABBITMQ_DIST_PORT"] = resource.GetEndpoint(LocalRabbitMQResource.DistributionEndpointName).Property(EndpointProperty.TargetPort);
                env["ERL_EPMD_PORT"] = epmd.Resource.PrimaryEndpoint.Property(EndpointProperty.Port);
                env["ERL_EPMD_ADDRESS"] = "127.0.0.1";
                env["RABBITMQ_MNESIA_BASE"] = Path.Combine(resource.DataDirectory, "mnesia");
                env["RABBITMQ_LOG_BASE"] = Path.Combine(resource.DataDirectory, "log");
                env["RABBITMQ_LOGS"] = "-";
                env["RABBITMQ_CONFIG_FILE"] = Path.Combine(resource.DataDirectory, "rabbitmq.conf");
                env["RABBITMQ_ENABLED_PLUGINS_FILE"] = WritePluginFiles(resource.DataDirectory);
                env["RABBITMQ_DEFAULT_USER"] = resource.UserName;
                env["RABBITMQ_DEFAULT_PASS"] = resource.Password;
                // -start_epmd false: the node registers with the epmd resource above and never starts a daemon of
                // its own, which would outlive the AppHost (it happened once when epmd was stopped first).
                env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = ReferenceExpression.Create(
                    $"-start_epmd false -kernel inet_dist_use_interface {{127,0,0,1}} -rabbitmq_prometheus tcp_config [{{port,{resource.PrometheusEndpoint.Property(EndpointProperty.TargetPort)}}},{{ip,\"127.0.0.1\"}}] "
                    + $"-rabbitmq_management tcp_config [{{port,{resource.ManagementEndpoint.Property(EndpointProperty.TargetPort)}}},{{ip,\"127.0.0.1\"}}]");
            })
            .WaitFor(epmd);
        return rabbit.WithProtocolHealthCheck(resource => new RabbitMQConnectHealthCheck(resource));
    }

    private static IResourceBuilder<IResourceWithConnectionString> WithProtocolHealthCheck<T>(
        this IResourceBuilder<T> builder, Func<T, IHealthCheck> createCheck) where T : class, IResourceWithConnectionString
    {
        var key = $"{builder.Resource.Name}_protocol_check";
        var check = createCheck(builder.Resource); // one instance, so its connection is reused between checks
        builder.ApplicationBuilder.Services.AddHealthChecks().Add(new HealthCheckRegistration(key, _ => check, failureStatus: null, tags: null));
        return builder.WithHealthCheck(key);
    }

    /// <summary>The management UI's link: it logs in with the broker's own user, whose name and password are AppHost parameters.</summary>
    private static string ManagementUiText(string userParameter, string passwordParameter) =>
        $"RabbitMQ management (log in with parameters {userParameter} / {passwordParameter})";

    private static string WritePluginFiles(string dataDirectory)
    {
        File.WriteAllText(Path.Combine(dataDirectory, "rabbitmq.conf"), "loopback_users = none\n");
        var plugins = Path.Combine(dataDirectory, "enabled_plugins");
        File.WriteAllText(plugins, "[rabbitmq_prometheus,rabbitmq_management].\n");
        return plugins;
    }
}
