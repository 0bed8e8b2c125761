using Aspire.Hosting.ApplicationModel;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using System.Net.Sockets;

namespace EventPipeline.AppHost.Brokers;

// Redis and RabbitMQ are checked by AspNetCore.HealthChecks.Redis / .Rabbitmq (BrokerResourceExtensions.WithRedisHealthCheck,
// WithRabbitMQHealthCheck). A plain TCP check stays hand-written: no package the feed serves has one
// (AspNetCore.HealthChecks.Network is not served).

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
