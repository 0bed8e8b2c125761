using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.UnitTests;

/// <summary>
/// Performance:RedisSocketThreads (Worker.Cpu/Extensions/Extensions.cs): the worker's Redis connections read replies on a
/// socket manager of their own (2 threads by default) instead of StackExchange.Redis's shared one with 10 threads, whose
/// idle wake-ups were a large part of the idle worker's CPU; 0 means the .NET thread pool; anything else is refused.
/// </summary>
public sealed class RedisSocketThreadsTests
{
    private static ConfigurationOptions RedisOptions(string? socketThreads)
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Configuration["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false";
        if (socketThreads is not null)
        {
            builder.Configuration["Performance:RedisSocketThreads"] = socketThreads;
        }

        builder.AddCpuLane();
        using var host = builder.Build();
        return host.Services.GetRequiredService<IOptions<ConfigurationOptions>>().Value;
    }

    [Fact]
    public void By_default_the_connections_use_a_socket_manager_of_their_own_not_the_shared_one_nor_the_thread_pool()
    {
        var options = RedisOptions(null);
        Assert.NotNull(options.SocketManager);
        Assert.NotSame(SocketManager.Shared, options.SocketManager);
        Assert.NotSame(SocketManager.ThreadPool, options.SocketManager);
        Assert.Equal("worker-cpu", options.SocketManager!.Name);
        // One manager per thread count for the process, not one per host (each would start threads of its own).
        Assert.Same(options.SocketManager, RedisOptions(null).SocketManager);
        Assert.Same(options.SocketManager, RedisOptions("2").SocketManager);
        Assert.NotSame(options.SocketManager, RedisOptions("3").SocketManager);
    }

    [Fact]
    public void Zero_reads_replies_on_the_thread_pool()
    {
        Assert.Same(SocketManager.ThreadPool, RedisOptions("0").SocketManager);
    }

    [Theory]
    [InlineData("-1")]
    [InlineData("65")]
    public void A_count_out_of_range_is_refused_with_the_setting_named(string value)
    {
        var ex = Assert.Throws<InvalidOperationException>(() => RedisOptions(value));
        Assert.Contains("Performance:RedisSocketThreads", ex.Message);
    }
}
