using System.Diagnostics;
using StackExchange.Redis;

namespace EventPipeline.Shared;

/// <summary>
/// The one definition, for every process, of "Redis failed or did not answer" (<see cref="IsOutage"/>, a broker
/// outage: answer 503 or retry later, never count it against an event), and of "Redis or its client threw at all"
/// (<see cref="IsRedisFailure"/>, outages and defects alike, for loops that must keep going). Besides the client's own exceptions and its timeouts, that includes the
/// race of StackExchange.Redis 2.x's I/O core (StackExchange.Redis#2692, resolved only by 3.0's rewrite): a connection
/// torn down while a command is written throws System.IO.Pipelines' <see cref="InvalidOperationException"/> ("Writing
/// is not allowed after writer was completed") out of the Redis call instead of a <see cref="RedisConnectionException"/>.
/// That one is matched exactly (the type, thrown by System.IO.Pipelines, inside the Redis client): any other
/// InvalidOperationException stays what it is, a defect.
/// </summary>
public static class RedisFailures
{
    private static readonly System.Reflection.Assembly RedisClient = typeof(IDatabase).Assembly;

    /// <summary>
    /// Whether <paramref name="exception"/> came from Redis or its client at all: an outage (<see cref="IsOutage"/>) or
    /// an error reply that is not one (a script bug, a key of the wrong type). For background loops that log and try
    /// again next round, which must outlive a defect as well as an outage. A caller that answers a request or decides an
    /// event's fate uses <see cref="IsOutage"/>: only an outage may be answered 503 with Retry-After or retried without
    /// end; a non-transient error retried that way never stops failing.
    /// </summary>
    public static bool IsRedisFailure(Exception exception) =>
        exception is RedisException or TimeoutException || IsConnectionLostMidWrite(exception);

    /// <summary>
    /// Whether <paramref name="exception"/> means Redis is down, slow, full or failing over, as opposed to a defect: the
    /// client's connection failure or timeout (or a deadline on a Redis call that ran out: the I/O lane's coalesced
    /// status writes), its writer-completed race, or one of Redis's error replies that only an outage gives (a replica not
    /// yet promoted, a primary down or still loading its data, a script running too long, a cluster resharding, memory
    /// full, a script cache lost in a failover). A client-side wrapper with no reply of its own (a plain
    /// <see cref="RedisException"/>, a <see cref="TimeoutException"/>, around a cause) is what its cause is. Every other
    /// error reply (ERR from a script bug, WRONGTYPE) is not: retrying it would fail forever.
    /// </summary>
    public static bool IsOutage(Exception exception) => exception switch
    {
        RedisConnectionException or RedisTimeoutException => true,
        RedisServerException server => IsOutageReply(server.Message),
        RedisCommandException => false,
        RedisException { InnerException: { } cause } when exception.GetType() == typeof(RedisException) => IsOutage(cause),
        TimeoutException { InnerException: { } cause } => IsOutage(cause),
        TimeoutException => true,
        _ => IsConnectionLostMidWrite(exception),
    };

    /// <summary>
    /// The error codes (an error reply's first word) Redis answers while it is unavailable, full or failing over. OOM
    /// (maxmemory reached under noeviction) passes when keys expire or memory is added; MISCONF (the AOF or an RDB
    /// snapshot cannot be written: a full disk) passes with the next write that succeeds; NOSCRIPT reaches a caller only
    /// when the client's re-send raced a failover, and the next call sends the script again.
    /// </summary>
    private static readonly string[] OutageReplies = ["READONLY", "MASTERDOWN", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS", "OOM", "NOSCRIPT", "MISCONF"];

    /// <summary>Whether a Redis error reply (its text, e.g. a per-write error a script returned) is one only an outage gives.</summary>
    public static bool IsOutageReply(string error)
    {
        var space = error.IndexOf(' ', StringComparison.Ordinal);
        var code = space < 0 ? error : error[..space];
        return OutageReplies.Contains(code, StringComparer.Ordinal);
    }

    /// <summary>
    /// Whether <paramref name="exception"/> is the writer-completed race of the Redis client: the connection closed
    /// while a command was written, so the command may or may not have reached Redis.
    /// </summary>
    public static bool IsConnectionLostMidWrite(Exception exception) =>
        exception.GetType() == typeof(InvalidOperationException)
        && exception.Source == "System.IO.Pipelines"
        && new StackTrace(exception, fNeedFileInfo: false).GetFrames().Any(f => f.GetMethod()?.DeclaringType?.Assembly == RedisClient);

    /// <summary>The race as the client's own connection failure, for callers that handle <see cref="RedisException"/>.</summary>
    public static RedisConnectionException AsConnectionFailure(Exception lostMidWrite) =>
        new(ConnectionFailureType.SocketClosed, "the Redis connection closed while the command was written (StackExchange.Redis#2692)", lostMidWrite);
}
