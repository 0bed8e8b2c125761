using System.Diagnostics;
using EventPipeline.Contracts;
using EventPipeline.Producer.Validation;
using EventPipeline.ServiceDefaults;
using EventPipeline.Shared;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.Ingest;

/// <summary>
/// The broker did not confirm the write (down, unreachable or too slow): the client gets 503. <see cref="Confirmed"/>
/// are the lane's events the broker confirmed before the failure (they will run); <see cref="Uncertain"/> were in
/// flight when it failed (the broker may or may not hold them); the lane's other events were not sent.
/// </summary>
public sealed class BrokerUnavailableException(string lane, Exception inner, IReadOnlyList<ValidatedEvent> confirmed, IReadOnlyList<ValidatedEvent> uncertain)
    : Exception($"The {lane} lane's broker did not confirm the write: {inner.Message}", inner)
{
    public string Lane { get; } = lane;

    public IReadOnlyList<ValidatedEvent> Confirmed { get; } = confirmed;

    public IReadOnlyList<ValidatedEvent> Uncertain { get; } = uncertain;
}

/// <summary>Hands accepted events to one lane's broker and returns only once the broker holds them durably.</summary>
public interface ILanePublisher
{
    string Lane { get; }

    Task PublishAsync(IReadOnlyList<ValidatedEvent> events, DateTimeOffset acceptedAt, CancellationToken cancellationToken);
}

/// <summary>
/// CPU lane: one script per request writes every event's <c>accepted</c> status and its stream entry (XADD), so no worker
/// can see an entry before its status exists, and nothing else runs in Redis between them. A script is not rolled back
/// when it fails part-way (nor is a MULTI/EXEC), so an error answers 503 with every event of the request in doubt.
/// Redis runs with AOF; the script's reply is the confirmation, and with <see cref="IngestOptions.RedisReplicaAcks"/>
/// &gt; 0 also <c>WAIT</c>'s count of replicas holding it (fewer → 503 with every event uncertain), so a primary's death
/// after the 202 cannot take the events with it. One round trip per request, sent as EVALSHA (<see cref="IngestScript"/>);
/// two on the first request after the server lost its scripts (a <c>NOSCRIPT</c> reply, then the text).
/// </summary>
public sealed class CpuLanePublisher(IConnectionMultiplexer redis, EventStatusStore statuses, RedisReplicaAcknowledgement replicas) : ILanePublisher
{
    // KEYS[1] stream, KEYS[1 + i] status hash of event i. ARGV[1] lane, ARGV[2] acceptedAt (unix ms), ARGV[3] status
    // ttl (s), ARGV[4] n trace-context fields, then n name/value pairs, then id, type, payload of each event. The
    // entry's fields and their order are CpuLaneStreams.NewEntry's. Returns the entry ids.
    private static readonly IngestScript PublishScript = new(EventStatusStore.RecordAcceptedLua + """
        -- Checked before anything is written (a script is not rolled back): a status without its entry would answer
        -- a retry as a repeat of an event that never runs.
        local streamType = redis.call('TYPE', KEYS[1]).ok
        if streamType ~= 'stream' and streamType ~= 'none' then
          return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is not a stream')
        end
        local traceFields = tonumber(ARGV[4])
        local first = 5 + 2 * traceFields
        local entry = { 'id', '', 'type', '', 'payload', '', 'acceptedAt', ARGV[2], 'attempt', '1' }
        for j = 5, first - 1 do entry[#entry + 1] = ARGV[j] end
        local added = {}
        for i = 2, #KEYS do
          local a = first + (i - 2) * 3
          -- An event that already has a state is held (the guard's reservation was bypassed: expired while this
          -- script waited, or lost in a failover): no second entry, no second run.
          if record_accepted(KEYS[i], ARGV[a], ARGV[a + 1], ARGV[1], ARGV[2], ARGV[3], true) then
            entry[2], entry[4], entry[6] = ARGV[a], ARGV[a + 1], ARGV[a + 2]
            added[#added + 1] = redis.call('XADD', KEYS[1], '*', unpack(entry))
          end
        end
        return added
        """);

    public string Lane => Lanes.Cpu;

    public async Task PublishAsync(IReadOnlyList<ValidatedEvent> events, DateTimeOffset acceptedAt, CancellationToken cancellationToken)
    {
        using var activity = PipelineTelemetry.ActivitySource.StartActivity($"{CpuLaneStreams.Stream} publish", ActivityKind.Producer);
        activity?.SetTag("messaging.system", "redis");
        activity?.SetTag("messaging.destination.name", CpuLaneStreams.Stream.ToString());
        activity?.SetTag("messaging.operation.type", "send");
        activity?.SetTag("messaging.batch.message_count", events.Count);
        var traceContext = LaneTraceContext.Inject(activity ?? Activity.Current);

        var keys = new RedisKey[events.Count + 1];
        var values = new RedisValue[4 + traceContext.Length * 2 + events.Count * 3];
        keys[0] = CpuLaneStreams.Stream;
        values[0] = Lane;
        values[1] = acceptedAt.ToUnixTimeMilliseconds();
        values[2] = statuses.TtlSeconds;
        values[3] = traceContext.Length;
        var v = 4;
        foreach (var field in traceContext)
        {
            values[v++] = field.Name;
            values[v++] = field.Value;
        }

        for (var i = 0; i < events.Count; i++)
        {
            var e = events[i];
            keys[i + 1] = EventStatusStore.Key(e.Id);
            values[v++] = e.Id;
            values[v++] = e.Type;
            // UTF-8 from the body: the same bytes Redis got from the text, without a UTF-16 copy of every payload at once.
            values[v++] = e.PayloadUtf8;
        }

        try
        {
            // Identified before the write: the replicas' acknowledgement must come from the server the script ran on.
            var primary = await replicas.PrimaryAsync();
            await PublishScript.EvaluateAsync(redis.GetDatabase(), keys, values, cancellationToken).AsRedisFailure().WaitAsync(cancellationToken);
            await replicas.WaitAsync(primary, cancellationToken);
        }
        catch (Exception ex) when (RedisFailures.IsRedisFailure(ex) || ex is OperationCanceledException)
        {
            // A script whose answer did not come in time may still have run: every event of it is in doubt.
            activity?.SetStatus(ActivityStatusCode.Error, ex.Message);
            throw new BrokerUnavailableException(Lane, ex, [], events);
        }
    }
}
