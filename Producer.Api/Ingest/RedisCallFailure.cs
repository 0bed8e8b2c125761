using EventPipeline.Shared;
using StackExchange.Redis;

namespace EventPipeline.Producer.Ingest;

/// <summary>
/// Turns the writer-completed race of StackExchange.Redis 2.x (<see cref="RedisFailures.IsConnectionLostMidWrite"/>,
/// StackExchange.Redis#2692: a connection that dies while a command is written throws an InvalidOperationException, not
/// a RedisConnectionException) into the client's own connection failure at a Redis call, so the caller's handling of
/// <see cref="RedisException"/> (a 503 naming what may be held) applies to it too. A CI run that killed the Redis primary
/// mid-burst got a 500 from the ingest before. Any other exception passes through unchanged. Calls that are not wrapped
/// are still answered 503 by <see cref="Apis.RedisOutageProblem"/>.
/// </summary>
internal static class RedisCallFailure
{
    public static async Task<T> AsRedisFailure<T>(this Task<T> call)
    {
        try
        {
            return await call;
        }
        catch (Exception ex) when (RedisFailures.IsConnectionLostMidWrite(ex))
        {
            throw RedisFailures.AsConnectionFailure(ex);
        }
    }

    public static async Task AsRedisFailure(this Task call)
    {
        try
        {
            await call;
        }
        catch (Exception ex) when (RedisFailures.IsConnectionLostMidWrite(ex))
        {
            throw RedisFailures.AsConnectionFailure(ex);
        }
    }
}
