using Aspire.Hosting.ApplicationModel;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using RabbitMQ.Client;
using StackExchange.Redis;
using System.Net.Sockets;

namespace EventPipeline.AppHost.Brokers;

/// <summary>Healthy when Redis answers PING with the configured password.</summary>
internal sealed class RedisPingHealthCheck(IResourceWithConnectionString redis) : IHealthCheck, IDisposable
{
    private ConnectionMultiplexer? _connection;

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        try
        {
            if (_connection is null)
            {
                var connectionString = await redis.GetConnectionStringAsync(cancellationToken);
                var options = ConfigurationOptions.Parse(connectionString!);
                options.AbortOnConnectFail = true;
                options.ConnectTimeout = 2000;
                _connection = await ConnectionMultiplexer.ConnectAsync(options);
            }

            await _connection.GetDatabase().PingAsync();
            return HealthCheckResult.Healthy();
        }
        catch (Exception ex)
        {
            _connection?.Dispose();
            _connection = null;
            return HealthCheckResult.Unhealthy("Redis did not answer PING", ex);
        }
    }

    public void Dispose() => _connection?.Dispose();
}

/// <summary>Healthy when an AMQP connection can be opened with the configured credentials.</summary>
internal sealed class RabbitMQConnectHealthCheck(IResourceWithConnectionString rabbit) : IHealthCheck, IDisposable
{
    private IConnection? _connection;

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        try
        {
            if (_connection is not { IsOpen: true })
            {
                _connection?.Dispose();
                var connectionString = await rabbit.GetConnectionStringAsync(cancellationToken);
                var factory = new ConnectionFactory { Uri = new Uri(connectionString!), RequestedConnectionTimeout = TimeSpan.FromSeconds(2) };
                _connection = await factory.CreateConnectionAsync(cancellationToken);
            }

            return HealthCheckResult.Healthy();
        }
        catch (Exception ex)
        {
            _connection = null;
            return HealthCheckResult.Unhealthy("RabbitMQ refused an AMQP connection", ex);
        }
    }

    public void Dispose() => _connection?.Dispose();
}

/// <summary>Healthy when something accepts TCP connections on the endpoint (epmd speaks no protocol we need).</summary>
internal sealed class TcpPortHealthCheck(EndpointReference endpoint) : IHealthCheck
{
    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        try
        {
            using var client = new TcpClient();
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(TimeSpan.FromSeconds(2));
            await client.ConnectAsync("127.0.0.1", endpoint.TargetPort ?? endpoint.Port, timeout.Token);
            return HealthCheckResult.Healthy();
        }
        catch (Exception ex)
        {
            return HealthCheckResult.Unhealthy($"nothing listens on {endpoint.EndpointName}", ex);
        }
    }
}
