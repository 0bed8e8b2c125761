using EventPipeline.Shared;

namespace EventPipeline.Producer.Monitoring;

/// <summary>
/// Declares the I/O lane's error exchange and queue when the API starts (retrying until RabbitMQ answers), so the
/// lane's dead-letter target exists even before any Worker.Io ran. The publisher declares the lane queue itself on the
/// first publish (<see cref="IoLaneTopology.DeclareAsync"/>).
/// </summary>
public sealed class IoLaneTopologyDeclarer(LazyRabbitMqConnection rabbit, ILogger<IoLaneTopologyDeclarer> logger) : BackgroundService
{
    private static readonly TimeSpan RetryEvery = TimeSpan.FromSeconds(2);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                var connection = await rabbit.GetAsync(stoppingToken);
                await using var channel = await connection.CreateChannelAsync(cancellationToken: stoppingToken);
                await IoLaneTopology.DeclareErrorQueueAsync(channel, stoppingToken);
                logger.LogInformation("Declared {ErrorQueue} for the I/O lane", IoLaneTopology.ErrorQueueName);
                return;
            }
            catch (Exception ex) when (!stoppingToken.IsCancellationRequested)
            {
                logger.LogWarning(ex, "Could not declare {ErrorQueue} yet; retrying in {Delay}", IoLaneTopology.ErrorQueueName, RetryEvery);
                await Task.Delay(RetryEvery, stoppingToken);
            }
        }
    }
}
