using EventPipeline.Producer.Ingest;
using StackExchange.Redis;

namespace EventPipeline.Producer.UnitTests;

public sealed class RedisCallFailureTests
{
    [Fact]
    public async Task A_write_on_a_closed_connection_is_a_redis_failure_the_ingest_answers_503_not_an_unhandled_500()
    {
        // What StackExchange.Redis threw in a CI run when the primary was killed mid-burst (a 500 from the API).
        var race = RedisConnectionLossTests.WriterCompletedInsideRedisClient();

        var failure = await Assert.ThrowsAsync<RedisConnectionException>(() => Task.FromException<RedisResult>(race).AsRedisFailure());

        Assert.Same(race, failure.InnerException);
    }

    [Fact]
    public async Task Any_other_invalid_operation_passes_through_unchanged()
    {
        var defect = new InvalidOperationException("a defect, not a connection loss");

        Assert.Same(defect, await Assert.ThrowsAsync<InvalidOperationException>(() => Task.FromException<RedisResult>(defect).AsRedisFailure()));
    }

    [Fact]
    public async Task A_reply_passes_through_unchanged()
    {
        var reply = RedisResult.Create((RedisValue)"ok");

        Assert.Same(reply, await Task.FromResult(reply).AsRedisFailure());
    }
}
