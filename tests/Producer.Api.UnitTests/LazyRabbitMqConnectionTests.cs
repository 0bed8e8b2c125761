using EventPipeline.Testing;
using EventPipeline.Producer.Monitoring;
using RabbitMQ.Client;

namespace EventPipeline.Producer.UnitTests;

/// <summary>
/// While RabbitMQ stalls a connect (a SIGSTOPped broker accepts TCP and never answers the handshake), the API's callers
/// — requests, the lane sampler, every health-check poll — must not each park a pool thread on the connect: one resolve
/// runs, every caller awaits it with its own deadline, and a failed connect is tried again by the next caller.
/// </summary>
public sealed class LazyRabbitMqConnectionTests
{
    /// <summary>Stands in for the container resolving Aspire's IConnection: blocks like its synchronous connect.</summary>
    private sealed class StallingProvider : IServiceProvider
    {
        public readonly ManualResetEventSlim Release = new(false);
        public int Entered;
        public Exception? Failure;

        public object? GetService(Type serviceType)
        {
            Interlocked.Increment(ref Entered);
            Release.Wait(TimeSpan.FromSeconds(30));
            if (Failure is { } failure)
            {
                Failure = null;
                throw failure;
            }

            return null; // GetRequiredService turns this into an InvalidOperationException: enough for the test
        }
    }

    [Fact]
    public async Task Concurrent_callers_during_a_stalled_connect_share_one_resolve_and_keep_their_own_deadline()
    {
        var provider = new StallingProvider();
        var connection = new LazyRabbitMqConnection(provider);

        var callers = Enumerable.Range(0, 8).Select(_ => connection.GetAsync(TimeSpan.FromMilliseconds(200))).ToList();
        foreach (var caller in callers)
        {
            await Assert.ThrowsAsync<TimeoutException>(() => caller);
        }

        Assert.Equal(1, Volatile.Read(ref provider.Entered));
        provider.Failure = new InvalidOperationException("connect failed");
        provider.Release.Set();

        // The failed resolve is not kept: the next caller tries again.
        await Eventually.TrueAsync(async () =>
        {
            try
            {
                await connection.GetAsync(TimeSpan.FromSeconds(5));
            }
            catch (InvalidOperationException)
            {
            }

            return Volatile.Read(ref provider.Entered) >= 2;
        }, TimeSpan.FromSeconds(30), "a second resolve after the failed one");
    }
}
