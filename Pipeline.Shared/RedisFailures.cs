using System.Diagnostics;
using StackExchange.Redis;

namespace EventPipeline.Shared;

/// <summary>
/// The one definition, for every process, of "Redis failed or did not answer" (a broker outage: answer 503 or retry
/// later, never count it against an event). Besides the client's own exceptions and its timeouts, that includes the
/// race of StackExchange.Redis 2.x's I/O core (StackExchange.Redis#2692, resolved only by 3.0's rewrite): a connection
/// torn down while a command is written throws System.IO.Pipelines' <see cref="InvalidOperationException"/> ("Writing
/// is not allowed after writer was completed") out of the Redis call instead of a <see cref="RedisConnectionException"/>.
/// That one is matched exactly (the type, thrown by System.IO.Pipelines, inside the Redis client): any other
/// InvalidOperationException stays what it is, a defect.
/// </summary>
public static class RedisFailures
{
    private static readonly System.Reflection.Assembly RedisClient = typeof(IDatabase).Assembly;

    /// <summary>Whether <paramref name="exception"/> means Redis failed or did not answer in time.</summary>
    public static bool IsRedisFailure(Exception exception) =>
        exception is RedisException or TimeoutException || IsConnectionLostMidWrite(exception);

    /// <summary>
    /// Whether <paramref name="exception"/> means Redis is down, slow or failing over, as opposed to a defect: the client's
    /// connection failure or timeout, its writer-completed race, or one of Redis's error replies that only an outage gives
    /// (a replica not yet promoted, a primary down or still loading its data, a script running too long, a cluster
    /// resharding). Every other error reply (a script bug, a wrong type) is not: retrying it would fail forever.
    /// </summary>
    public static bool IsOutage(Exception exception) => exception switch
    {
        RedisConnectionException or RedisTimeoutException => true,
        RedisServerException server => IsOutageReply(server.Message),
        _ => IsConnectionLostMidWrite(exception),
    };

    /// <summary>The error codes (an error reply's first word) Redis answers while it is unavailable or failing over.</summary>
    private static readonly string[] OutageReplies = ["READONLY", "MASTERDOWN", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS"];

    private static bool IsOutageReply(string message)
    {
        var space = message.IndexOf(' ', StringComparison.Ordinal);
        var code = space < 0 ? message : message[..space];
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
