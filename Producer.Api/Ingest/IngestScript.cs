using System.Security.Cryptography;
using System.Text;
using StackExchange.Redis;

namespace EventPipeline.Producer.Ingest;

/// <summary>
/// A Lua script an ingest request runs in its one Redis round trip, sent as <c>EVALSHA</c> of the SHA-1 computed here
/// once. Given the script's text, StackExchange.Redis finds the SHA-1 in a table keyed by that text, hashing all of
/// its ~4 KB on every call (2–3 % of the API's CPU per single POST in a profile, Session 7 of docs/benchmarks.md).
/// A server that does not know the script (restarted, failed over, <c>SCRIPT FLUSH</c>) answers <c>NOSCRIPT</c>
/// without running anything, so that one call is sent again with the text, which StackExchange.Redis loads: the
/// request's writes still happen once, and only its first call after the cache was lost costs a second round trip.
/// The text is not sent once the request has given up (its cancellation token): its answer, a 503, named
/// its events as possibly held, and a write sent after it would land behind a client's retry under new ids.
/// </summary>
internal sealed class IngestScript(string text)
{
    private readonly byte[] _sha1 = SHA1.HashData(Encoding.UTF8.GetBytes(text));

    public async Task<RedisResult> EvaluateAsync(IDatabase db, RedisKey[] keys, RedisValue[] values, CancellationToken cancellationToken)
    {
        try
        {
            return await db.ScriptEvaluateAsync(_sha1, keys, values);
        }
        catch (RedisServerException ex) when (ex.Message.StartsWith("NOSCRIPT", StringComparison.Ordinal))
        {
            cancellationToken.ThrowIfCancellationRequested();
            return await db.ScriptEvaluateAsync(text, keys, values);
        }
    }
}
