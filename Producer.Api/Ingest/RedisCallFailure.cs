using StackExchange.Redis;

namespace EventPipeline.Producer.Ingest;

/// <summary>
/// StackExchange.Redis can throw <see cref="InvalidOperationException"/> ("Writing is not allowed after writer was
/// completed", from System.IO.Pipelines) when a connection dies while a command is being written: a CI run that killed
/// the Redis primary mid-burst got a 500 from it. A known race of the 2.x I/O core (StackExchange.Redis#2692, resolved
/// by the 3.0 rewrite; 3.x is served here, and moving to it under Aspire 13.6.5's Redis integration is still to be
/// tried). A broker that went away is a 503 naming what may be held, so the ingest's script calls turn that exception
/// into the client's own connection failure. Only the Redis call is wrapped: any InvalidOperationException from it is
/// the client's.
/// </summary>
internal static class RedisCallFailure
{
    public static async Task<RedisResult> AsRedisFailure(this Task<RedisResult> call)
    {
        try
        {
            return await call;
        }
        catch (InvalidOperationException ex)
        {
            throw new RedisConnectionException(ConnectionFailureType.SocketClosed, "the Redis connection closed while the command was written", ex);
        }
    }
}
