using StackExchange.Redis;

namespace EventPipeline.Shared;

/// <summary>
/// Redis names and entry fields of the CPU lane. The API writes entries; Worker.Cpu reads them through the group.
/// </summary>
public static class CpuLaneStreams
{
    public static readonly RedisKey Stream = "events.cpu";
    public static readonly RedisKey DeadLetters = "events.cpu.dead";

    /// <summary>Sorted set of retries waiting for their due time (score = due time, unix ms).</summary>
    public static readonly RedisKey Delayed = "events.cpu.delayed";

    /// <summary>
    /// Hash: stream entry id → how many times a handler started it (deleted when the entry is acknowledged). A count
    /// left behind by a consumer that died says the entry was running, not merely waiting in its buffer.
    /// </summary>
    public static readonly RedisKey Started = "events.cpu.started";

    public const string Group = "cpu-workers";

    public static class Fields
    {
        public const string Id = "id";
        public const string Type = "type";
        public const string Payload = "payload";
        public const string AcceptedAt = "acceptedAt";
        public const string Attempt = "attempt";
    }

    /// <summary>The fields of a freshly accepted event (attempt 1), with its trace context (<see cref="LaneTraceContext"/>).</summary>
    public static NameValueEntry[] NewEntry(string id, string type, string payload, DateTimeOffset acceptedAt, IReadOnlyCollection<NameValueEntry>? traceContext) =>
    [
        new(Fields.Id, id),
        new(Fields.Type, type),
        new(Fields.Payload, payload),
        new(Fields.AcceptedAt, acceptedAt.ToUnixTimeMilliseconds()),
        new(Fields.Attempt, 1),
        .. traceContext ?? [],
    ];
}
