using System.Globalization;
using EventPipeline.Contracts;
using EventPipeline.Producer.Ingest;
using EventPipeline.Producer.Validation;
using EventPipeline.Shared;
using EventPipeline.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;

namespace EventPipeline.Producer.UnitTests;

/// <summary>One rabbitmq-server for the whole class: each test uses its own connection name, so counts do not mix.</summary>
public sealed class IoEventPublisherRabbit : IAsyncLifetime
{
    public RabbitMqServer Rabbit { get; private set; } = null!;

    public async Task InitializeAsync() => Rabbit = await RabbitMqServer.StartAsync();

    public async Task DisposeAsync() => await Rabbit.DisposeAsync();

    /// <summary>The broker's own PID (the script execs the VM), for SIGSTOP.</summary>
    public async Task<int> PidAsync() =>
        int.Parse((await Rabbit.CtlAsync("eval", "list_to_integer(os:getpid()).")).Trim().Split('\n').Last(), CultureInfo.InvariantCulture);

    /// <summary>Channels the broker has open on the connections named <paramref name="clientName"/>.</summary>
    public async Task<int> ChannelsAsync(string clientName)
    {
        // rabbitmqctl 3.10 has no user_provided_name column: the name is the connection_name client property.
        var output = await Rabbit.CtlAsync("list_connections", "-q", "--no-table-headers", "client_properties", "channels");
        return output.Split('\n')
            .Where(line => line.Contains($"\"{clientName}\"", StringComparison.Ordinal))
            .Sum(line => int.Parse(line.Split('\t')[^1].Trim(), CultureInfo.InvariantCulture));
    }
}

/// <summary>
/// The I/O lane's own publisher against a real rabbitmq-server: its connection is made again when the client's
/// automatic recovery will not bring it back, so ingest and Worker.Cpu's hand-offs do not answer 503 until a restart;
/// a caller that gives up never leaves a channel open behind it, and only a broker's refusal empties the channel pool.
/// </summary>
public sealed class IoEventPublisherTests(IoEventPublisherRabbit fixture) : IClassFixture<IoEventPublisherRabbit>
{
    private RabbitMqServer Rabbit => fixture.Rabbit;

    private static IoEventSubmitted Event() =>
        new($"io-{Guid.NewGuid():N}", "noop.io", "{}", DateTimeOffset.UtcNow, null);

    [Fact]
    public async Task Publishing_works_again_after_its_connection_was_closed_for_good()
    {
        await using var connection = new IoLaneConnection(RabbitMqNodes.Parse(Rabbit.ConnectionString), "io-publisher-test");
        await using var publisher = new IoEventPublisher(connection, NullLogger<IoEventPublisher>.Instance);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var before = await Rabbit.MessageCountAsync(IoLaneTopology.QueueName) ?? 0;
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
        Assert.Equal(before + 2u, await Rabbit.MessageCountAsync(IoLaneTopology.QueueName));
    }

    [Fact]
    public async Task After_a_recovery_the_lane_is_declared_again_before_a_pooled_channel_publishes()
    {
        await using var connection = new IoLaneConnection(RabbitMqNodes.Parse(Rabbit.ConnectionString), "io-publisher-recovered");
        await using var publisher = new IoEventPublisher(connection, NullLogger<IoEventPublisher>.Instance);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        // Several idle channels in the pool.
        await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => publisher.PublishAsync([Event()], timeout.Token)));

        // The broker loses the lane's queue (as a reset that lost its data would) and drops the connection; the client's
        // automatic recovery brings the connection back, and the pooled channels with it.
        await Rabbit.CtlAsync("delete_queue", IoLaneTopology.QueueName);
        var generation = connection.Generation;
        await Rabbit.CtlAsync("close_all_connections", "test: broker restarted");
        await Eventually.TrueAsync(() => Task.FromResult(connection.Generation != generation), TimeSpan.FromSeconds(30),
            "the publishers' connection to recover", TimeSpan.FromMilliseconds(100));

        // The first publish after the recovery is confirmed: a pooled channel would have published to an exchange with
        // no queue bound (returned: a 503) — the lane is declared again first.
        await publisher.PublishAsync([Event()], timeout.Token);
        Assert.Equal(1u, await Rabbit.MessageCountAsync(IoLaneTopology.QueueName));
    }

    [Fact]
    public async Task Publishes_that_give_up_while_the_broker_is_slow_leave_no_channel_open()
    {
        const string name = "io-publisher-gave-up";
        await using var connection = new IoLaneConnection(RabbitMqNodes.Parse(Rabbit.ConnectionString), name);
        await using var publisher = new IoEventPublisher(connection, NullLogger<IoEventPublisher>.Instance);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await publisher.PublishAsync([Event()], timeout.Token);

        var pid = await fixture.PidAsync();
        var outcomes = new List<Exception?>();
        await using (ProcessPause.Of(pid))
        {
            // Each caller gives up after a second, while its channel.open is on the wire and not answered.
            var publishes = Enumerable.Range(0, 50).Select(async _ =>
            {
                using var gaveUp = new CancellationTokenSource(TimeSpan.FromSeconds(1));
                try
                {
                    await publisher.PublishAsync([Event()], gaveUp.Token);
                    return null;
                }
                catch (Exception ex)
                {
                    return ex;
                }
            }).ToList();
            outcomes.AddRange(await Task.WhenAll(publishes));
        }

        Assert.All(outcomes, ex => Assert.IsAssignableFrom<OperationCanceledException>(ex));
        // Confirmed after the 50 channel.opens were read by the broker (one socket, in order).
        await publisher.PublishAsync([Event()], timeout.Token);
        await Eventually.ReturnsAsync(() => fixture.ChannelsAsync(name), channels => channels <= 16, TimeSpan.FromSeconds(30),
            "the publisher's connection to keep no more channels open than its idle pool (16) after 50 publishes gave up",
            TimeSpan.FromMilliseconds(500));
    }

    [Fact]
    public async Task A_publish_the_caller_gave_up_on_does_not_close_the_other_idle_channels()
    {
        await using var connection = new IoLaneConnection(RabbitMqNodes.Parse(Rabbit.ConnectionString), "io-publisher-cancel");
        await using var publisher = new IoEventPublisher(connection, NullLogger<IoEventPublisher>.Instance);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        // Several channels in the idle pool.
        await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => publisher.PublishAsync([Event()], timeout.Token)));
        Assert.True(publisher.ChannelsOpened >= 2, $"{publisher.ChannelsOpened} channels opened by 8 concurrent publishes");

        // A client that times out mid-publish: its channel has confirms outstanding, the others are as good as before.
        await using (ProcessPause.Of(await fixture.PidAsync()))
        {
            using var gaveUp = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => publisher.PublishAsync([Event()], gaveUp.Token));
        }

        var opened = publisher.ChannelsOpened;
        await publisher.PublishAsync([Event()], timeout.Token);
        Assert.True(opened == publisher.ChannelsOpened,
            $"the publish after a cancelled one opened {publisher.ChannelsOpened - opened} new channel(s) instead of taking an idle one");
    }

    [Fact]
    public async Task A_disposed_connection_opens_no_new_connection()
    {
        var connection = new IoLaneConnection(RabbitMqNodes.Parse(Rabbit.ConnectionString), "io-publisher-disposed");
        await connection.DisposeAsync();

        await Assert.ThrowsAsync<ObjectDisposedException>(() => connection.GetAsync(CancellationToken.None));
    }
}
