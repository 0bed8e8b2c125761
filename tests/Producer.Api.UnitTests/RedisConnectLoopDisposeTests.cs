using EventPipeline.Shared;
using EventPipeline.Testing;
using Microsoft.Extensions.Hosting.Internal;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.UnitTests;

/// <summary>
/// <see cref="RedisConnectLoop"/> disposed while an attempt is about to begin, against a real redis-server and a real
/// Sentinel: nothing the attempt would make may outlive the loop.
/// </summary>
public sealed class RedisConnectLoopDisposeTests
{
    [Fact]
    public async Task A_dispose_between_the_disposed_check_and_the_attempt_leaves_no_connection_open()
    {
        await using var redis = await RedisServer.StartAsync();
        await using var sentinel = await LoneSentinel.StartAsync(redis, "ep-loop");
        await using var probe = await sentinel.ConnectProbeAsync();
        var baseline = await probe.ClientsAsync();
        using var loop = new RedisConnectLoop(Options.Create(ConfigurationOptions.Parse(sentinel.ConnectionString + ",connectTimeout=2000")),
            new ApplicationLifetime(NullLogger<ApplicationLifetime>.Instance), NullLoggerFactory.Instance);
        // The host disposes the loop (a stop with no ApplicationStopping, or a dispose racing the first attempt) right
        // after the attempt saw it was not disposed, before the attempt was published for Dispose to see.
        loop.AfterDisposedCheck = loop.Dispose;

        var connected = await loop.ConnectAsync((_, _, _) => { }, _ => { }, CancellationToken.None);
        try
        {
            Assert.True(connected is null,
                $"ConnectAsync returned a connection made after its loop was disposed ({connected?.Connection.GetEndPoints().FirstOrDefault()})");
            await Eventually.TrueAsync(async () => await probe.ClientsAsync() <= baseline, TimeSpan.FromSeconds(15),
                $"the Sentinel's clients to stay at {baseline} (the probe's own) with the loop disposed before its attempt");
        }
        finally
        {
            connected?.Connection.Dispose();
        }
    }
}
