using EventPipeline.Shared;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using StackExchange.Redis;

namespace EventPipeline.Producer.UnitTests;

/// <summary>
/// Which connection the API's classes get (<c>SentinelConnectionAtStart</c> under Sentinel, Aspire's otherwise) is
/// decided from wherever Aspire reads the Redis settings, never by throwing; and which failures of a connect attempt
/// are retried.
/// </summary>
public sealed class SentinelConnectionAtStartTests
{
    [Fact]
    public void Redis_set_only_through_aspires_section_does_not_fail_the_api_at_build()
    {
        var builder = Builder(new() { ["Aspire:StackExchange:Redis:ConnectionString"] = "127.0.0.1:1" });
        var error = Record.Exception(() => builder.AddApplicationServices());
        Assert.True(error is null, $"AddApplicationServices threw with Redis set in Aspire:StackExchange:Redis:ConnectionString only: {error}");
    }

    [Fact]
    public void Sentinel_named_in_aspires_configuration_options_gets_the_connection_made_in_the_background()
    {
        var builder = Builder(new()
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1",
            ["Aspire:StackExchange:Redis:ConfigurationOptions:ServiceName"] = "ep-redis",
        });
        builder.AddApplicationServices();
        var descriptor = builder.Services.Last(d => d.ServiceType == typeof(IConnectionMultiplexer));
        Assert.True(builder.Services.Any(d => d.ServiceType == typeof(SentinelConnectionAtStart)),
            "a Sentinel service name set in Aspire:StackExchange:Redis:ConfigurationOptions was not detected: the API would connect synchronously at start and exit when no Sentinel answers");
        Assert.NotNull(descriptor.ImplementationFactory);
    }

    [Fact]
    public void A_failover_racing_the_connect_is_retried_and_an_error_no_retry_can_heal_is_not()
    {
        // What the Sentinel's primary switch throws when the primary changes between discovery and the switch.
        var failover = new AggregateException(new RedisConnectionException(ConnectionFailureType.UnableToConnect, "Sentinel: Failed connecting to switch primary for service: ep-api"));
        Assert.True(SentinelConnectionAtStart.IsTransient(failover), "a failover racing the connect would stop the API instead of being retried");
        Assert.True(SentinelConnectionAtStart.IsTransient(new RedisConnectionException(ConnectionFailureType.UnableToConnect, "timeout")));
        Assert.False(SentinelConnectionAtStart.IsTransient(new ArgumentException("A ServiceName must be specified.")));
        Assert.False(SentinelConnectionAtStart.IsTransient(new AggregateException(failover.InnerExceptions[0], new NullReferenceException())),
            "a defect wrapped with a Redis failure would be retried forever");
    }

    private static WebApplicationBuilder Builder(Dictionary<string, string?> redis)
    {
        var builder = WebApplication.CreateBuilder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>(redis)
        {
            ["ConnectionStrings:rabbitmq"] = "amqp://guest:guest@127.0.0.1:1",
            ["Auth:ApiKeys:Submit"] = "submit-key-0123456789",
            ["Auth:ApiKeys:Admin"] = "admin-key-0123456789",
        });
        return builder;
    }
}
