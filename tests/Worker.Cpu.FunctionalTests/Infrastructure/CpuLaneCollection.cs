using EventPipeline.Testing;

namespace EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;

/// <summary>
/// All CPU-lane tests run one after another (they start and kill real processes and would only fight over two cores)
/// and share one RabbitMQ node, started on first use: only the tests that go through the API or forward to the I/O
/// lane need it, and it is the slowest thing to boot.
/// </summary>
[CollectionDefinition(Name)]
public sealed class CpuLaneCollection : ICollectionFixture<SharedRabbitMq>
{
    public const string Name = "CPU lane processes";
}

public sealed class SharedRabbitMq : IAsyncLifetime
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private RabbitMqServer? _server;

    public async Task<RabbitMqServer> GetAsync()
    {
        await _gate.WaitAsync();
        try
        {
            return _server ??= await RabbitMqServer.StartAsync();
        }
        finally
        {
            _gate.Release();
        }
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_server is not null)
        {
            await _server.DisposeAsync();
        }
    }
}
