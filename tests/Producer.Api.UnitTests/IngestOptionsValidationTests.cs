using EventPipeline.Producer.Ingest;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.UnitTests;

/// <summary>An ingest limit out of its range (one that would overflow a buffer size, say) fails the API's start with its name.</summary>
public sealed class IngestOptionsValidationTests
{
    [Theory]
    [InlineData("Ingest:MaxBatchBytes", "2147483647", "MaxBatchBytes")]
    [InlineData("Ingest:MaxEventBytes", "0", "MaxEventBytes")]
    [InlineData("Ingest:IoPublishChunk", "20000", "IoPublishChunk")]
    [InlineData("Backpressure:BodyReadTimeout", "30.00:00:00", "BodyReadTimeout")]
    public void An_ingest_limit_out_of_range_fails_the_start_naming_it(string key, string value, string named)
    {
        var builder = WebApplication.CreateBuilder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            [key] = value,
            ["ConnectionStrings:redis"] = "127.0.0.1:1",
            ["ConnectionStrings:rabbitmq"] = "amqp://guest:guest@127.0.0.1:1",
            ["Auth:ApiKeys:Submit"] = "submit-key-0123456789",
            ["Auth:ApiKeys:Admin"] = "admin-key-0123456789",
        });
        builder.AddApplicationServices();
        builder.AddInFlightIngestBudget();
        using var services = builder.Services.BuildServiceProvider();

        // What the host runs before it starts anything (ValidateOnStart).
        // (an AggregateException when more than one setting is wrong)
        var failure = Assert.ThrowsAny<Exception>(() => services.GetRequiredService<IStartupValidator>().Validate());
        Assert.Contains(named, failure.Message);
    }
}
