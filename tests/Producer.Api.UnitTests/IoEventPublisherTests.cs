using EventPipeline.Contracts;
using EventPipeline.Shared;
using EventPipeline.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using RabbitMQ.Client;

namespace EventPipeline.Producer.UnitTests;

/// <summary>
/// The I/O lane's own publisher against a real rabbitmq-server: its connection is made again when the client's
/// automatic recovery will not bring it back, so ingest and Worker.Cpu's hand-offs do not answer 503 until a restart.
/// </summary>
public sealed class IoEventPublisherTests : IAsyncLifetime
{
    private RabbitMqServer _rabbit = null!;

    public async Task InitializeAsync() => _rabbit = await RabbitMqServer.StartAsync();

    public async Task DisposeAsync() => await _rabbit.DisposeAsync();

    private static IoEventSubmitted Event() =>
        new($"io-{Guid.NewGuid():N}", "noop.io", "{}", DateTimeOffset.UtcNow, null);

    [Fact]
    public async Task Publishing_works_again_after_its_connection_was_closed_for_good()
    {
        await using var connection = new IoLaneConnection(RabbitMqNodes.Parse(_rabbit.ConnectionString), "io-publisher-test");
        await using var publisher = new IoEventPublisher(connection, NullLogger<IoEventPublisher>.Instance);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await publisher.PublishAsync([Event()], timeout.Token);

        // A close that automatic recovery does not follow (here the application's own; a server's ACCESS_REFUSED and a
        // failed recovery loop end the same way): every channel asked of this connection would throw from now on.
        await (await connection.GetAsync(timeout.Token)).CloseAsync(timeout.Token);

        await Eventually.TrueAsync(async () =>
        {
            try
            {
                await publisher.PublishAsync([Event()], timeout.Token);
                return true;
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                return false;
            }
        }, TimeSpan.FromSeconds(10), "a publish to be confirmed on a new connection", TimeSpan.FromMilliseconds(200));
        Assert.Equal(2u, await _rabbit.MessageCountAsync(IoLaneTopology.QueueName));
    }
}
