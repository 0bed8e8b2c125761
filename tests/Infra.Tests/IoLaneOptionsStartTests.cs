using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace EventPipeline.Infra.Tests;

/// <summary>
/// Worker.Io configures its bus and HTTP client from the validated <c>IoLane</c> options only: a value out of its
/// range fails the worker's start naming the setting, never a bus configured with it.
/// </summary>
public sealed class IoLaneOptionsStartTests
{
    [Theory]
    [InlineData("IoLane:ConcurrentMessageLimit")]
    [InlineData("IoLane:PrefetchCount")]
    public async Task A_zero_IoLane_limit_fails_the_start_naming_it(string key)
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            [key] = "0",
            // Nothing listens on port 1: the start must fail before anything connects.
            ["ConnectionStrings:redis"] = "127.0.0.1:1",
            ["ConnectionStrings:rabbitmq"] = "amqp://guest:guest@127.0.0.1:1",
            ["Downstream:BaseAddress"] = "http://127.0.0.1:1",
            ["Downstream:AllowedHosts:0"] = "127.0.0.1",
        });
        builder.AddIoLane();

        var failure = await Assert.ThrowsAnyAsync<OptionsValidationException>(async () =>
        {
            using var host = builder.Build();
            await host.StartAsync();
            await host.StopAsync();
        });
        Assert.Contains(key.Split(':')[1], failure.Message);
    }
}
