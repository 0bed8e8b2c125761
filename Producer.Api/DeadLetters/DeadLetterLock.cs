using StackExchange.Redis;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.DeadLetters;

/// <summary>
/// One dead-letter operation that changes a lane at a time, across every API replica (a Redis lock with a token and
/// a TTL), so operators do not trip over each other. Correctness does not rest on it — the lock can expire
/// mid-operation: each store makes every change conditional on the dead letter still being there.
/// </summary>
public sealed class DeadLetterLock(IConnectionMultiplexer redis, IOptions<DeadLetterOptions> options)
{
    private const string ReleaseScript = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

    /// <exception cref="DeadLetterBusyException">another operation holds the lane.</exception>
    public async Task<IAsyncDisposable> AcquireAsync(string lane)
    {
        var key = (RedisKey)$"deadletters:{lane}:lock";
        var token = Guid.NewGuid().ToString("N");
        var db = redis.GetDatabase();
        if (!await db.StringSetAsync(key, token, options.Value.LockTimeout, When.NotExists))
        {
            throw new DeadLetterBusyException(lane);
        }

        return new Held(db, key, token);
    }

    private sealed class Held(IDatabase db, RedisKey key, string token) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync() => await db.ScriptEvaluateAsync(ReleaseScript, [key], [token]);
    }
}
