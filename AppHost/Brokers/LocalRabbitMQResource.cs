namespace Aspire.Hosting.ApplicationModel;

/// <summary>Debian's <c>rabbitmq-server</c> run as a local process with its own node name, data and epmd.</summary>
public sealed class LocalRabbitMQResource(string name, string dataDirectory, ParameterResource userName, ParameterResource password)
    : ExecutableResource(name, RabbitMQServerPath, dataDirectory), IResourceWithConnectionString
{
    // The /usr/sbin wrapper insists on running as the rabbitmq user; the script underneath runs as anyone.
    internal const string RabbitMQServerPath = "/usr/lib/rabbitmq/bin/rabbitmq-server";
    internal const string PrimaryEndpointName = "amqp";
    internal const string DistributionEndpointName = "dist";
    internal const string PrometheusEndpointName = "prometheus";
    internal const string ManagementEndpointName = "management";

    public string DataDirectory { get; } = dataDirectory;

    public ParameterResource UserName { get; } = userName;

    public ParameterResource Password { get; } = password;

    public EndpointReference PrimaryEndpoint => field ??= new(this, PrimaryEndpointName);

    public EndpointReference PrometheusEndpoint => field ??= new(this, PrometheusEndpointName);

    public EndpointReference ManagementEndpoint => field ??= new(this, ManagementEndpointName);

    public ReferenceExpression ConnectionStringExpression =>
        ReferenceExpression.Create(
            $"amqp://{UserName}:{Password}@{PrimaryEndpoint.Property(EndpointProperty.HostAndPort)}");
}

/// <summary>The Erlang port mapper daemon a local RabbitMQ node registers with, on a port of its own.</summary>
public sealed class EpmdResource(string name, string workingDirectory) : ExecutableResource(name, "epmd", workingDirectory)
{
    internal const string PrimaryEndpointName = "tcp";

    public EndpointReference PrimaryEndpoint => field ??= new(this, PrimaryEndpointName);
}
