using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.Lane;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

/// <summary>
/// The blocking reader's connection takes the worker's Redis settings from where the worker's other connection (Aspire's
/// client) takes them: <c>ConnectionStrings:redis</c>, else <c>Aspire:StackExchange:Redis:ConnectionString</c>, with
/// <c>Aspire:StackExchange:Redis:ConfigurationOptions</c> applied. Against a real redis-server, with the worker's own
/// service registrations (<c>AddCpuLane</c>).
/// </summary>
public sealed class StreamEntryReaderSettingsTests : IAsyncLifetime
{
    private RedisServer _redis = null!;

    public async Task InitializeAsync() => _redis = await RedisServer.StartAsync();

    public async Task DisposeAsync() => await _redis.DisposeAsync();

    public static TheoryData<string> Settings => new()
    {
        "the connection string in Aspire:StackExchange:Redis:ConnectionString",
        "the password in Aspire:StackExchange:Redis:ConfigurationOptions",
        "RESP3 asked for in Aspire:StackExchange:Redis:ConfigurationOptions",
    };

    [Theory]
    [MemberData(nameof(Settings))]
    public async Task The_reader_reads_from_the_redis_the_workers_other_connection_uses(string settings)
    {
        // Production: the services are not all validated at build (the lane's hosted services need ServiceDefaults,
        // which this test leaves out); only the reader and the shared connection are resolved.
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { EnvironmentName = "Production" });
        builder.Configuration.AddInMemoryCollection(
            settings.StartsWith("the connection string", StringComparison.Ordinal)
                ? new Dictionary<string, string?> { ["Aspire:StackExchange:Redis:ConnectionString"] = _redis.ConnectionString }
            : settings.StartsWith("RESP3", StringComparison.Ordinal)
                ? new Dictionary<string, string?>
                {
                    // The reader parses XREADGROUP's RESP2 reply (review of s11-carried, M1): RESP3 answers with a map.
                    ["ConnectionStrings:redis"] = _redis.ConnectionString,
                    ["Aspire:StackExchange:Redis:ConfigurationOptions:Protocol"] = "Resp3",
                }
                : new Dictionary<string, string?>
                {
                    ["ConnectionStrings:redis"] = $"127.0.0.1:{_redis.Port}",
                    ["Aspire:StackExchange:Redis:ConfigurationOptions:Password"] = _redis.Password,
                });
        builder.AddCpuLane();
        var host = builder.Build();
        await using var disposeHost = (IAsyncDisposable)host;

        // The worker's other connection reaches this Redis with these settings...
        var shared = host.Services.GetRequiredService<IConnectionMultiplexer>();
        Assert.True(await shared.GetDatabase().PingAsync() >= TimeSpan.Zero);
        await StreamEntryReader.EnsureGroupAsync(shared.GetDatabase());
        var id = Guid.NewGuid().ToString("N");
        await shared.GetDatabase().StreamAddAsync(CpuLaneStreams.Stream, CpuLaneStreams.NewEntry(id, "noop.cpu", "{}", DateTimeOffset.UtcNow, null));

        // ...and so must the reader, or the worker takes no entry while everything else about it works.
        var reader = host.Services.GetRequiredService<StreamEntryReader>();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var read = await Record.ExceptionAsync(async () =>
        {
            var entries = await reader.ReadAsync("settings-test", 10, timeout.Token);
            Assert.Equal([id], entries.Select(e => e.Id));
        });

        Assert.True(read is null, $"with {settings}, the reader failed where the worker's other connection worked: {read?.GetType().Name}: {read?.Message}");
    }

    [Fact]
    public async Task A_read_after_the_reader_is_disposed_opens_no_connection()
    {
        // The host disposes the reader at its end; a lane loop still running past the shutdown timeout must not open a
        // new blocking connection that nothing disposes (review of s11-carried, L2).
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { EnvironmentName = "Production" });
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionStrings:redis"] = _redis.ConnectionString });
        builder.AddCpuLane();
        var host = builder.Build();
        await using var disposeHost = (IAsyncDisposable)host;
        var reader = host.Services.GetRequiredService<StreamEntryReader>();
        await reader.DisposeAsync();

        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var read = await Record.ExceptionAsync(() => reader.ReadAsync("disposed-test", 10, timeout.Token));

        await using var probe = await ConnectionMultiplexer.ConnectAsync(_redis.ConnectionString + ",allowAdmin=true");
        var clients = await probe.GetServer(probe.GetEndPoints()[0]).ClientListAsync();
        Assert.DoesNotContain(clients, c => c.Name == "worker-cpu-reader");
        Assert.True(read is ObjectDisposedException, $"a read after dispose ended with {read?.GetType().Name ?? "entries"}: {read?.Message}");
    }
}
