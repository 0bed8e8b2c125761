using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.UnitTests;

/// <summary>
/// The API's Redis replies are completed on the thread pool, not handed from the client's dedicated reader threads to
/// a pool thread (one thread hop less per round trip: single POSTs cost less CPU, docs/benchmarks-history.md "Session 6: API");
/// the switch stays in configuration so an operator can go back without a rebuild.
/// </summary>
public sealed class RequestPathThreadingTests
{
    [Fact]
    public void Redis_replies_are_read_on_the_thread_pool_by_default()
    {
        using var services = Build([]);

        var options = services.GetRequiredService<IOptions<ConfigurationOptions>>().Value;

        Assert.Same(SocketManager.ThreadPool, options.SocketManager);
    }

    [Fact]
    public void Performance_settings_switch_the_redis_reader_and_kestrel_scheduling()
    {
        using var services = Build(new()
        {
            ["Performance:RedisOnThreadPool"] = "false",
            ["Performance:KestrelInlineScheduling"] = "true",
        });

        Assert.NotSame(SocketManager.ThreadPool, services.GetRequiredService<IOptions<ConfigurationOptions>>().Value.SocketManager);
        Assert.True(services.GetRequiredService<IOptions<SocketTransportOptions>>().Value.UnsafePreferInlineScheduling);
    }

    private static ServiceProvider Build(Dictionary<string, string?> settings)
    {
        var builder = WebApplication.CreateBuilder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1",
            ["ConnectionStrings:rabbitmq"] = "amqp://guest:guest@127.0.0.1:1",
            ["Auth:ApiKeys:Submit"] = "submit-key-0123456789",
            ["Auth:ApiKeys:Admin"] = "admin-key-0123456789",
        });
        builder.Configuration.AddInMemoryCollection(settings);
        builder.AddApplicationServices();
        return builder.Services.BuildServiceProvider();
    }
}
