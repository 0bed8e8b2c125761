using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace EventPipeline.Bench.Workloads;

/// <summary>What each event asks the pipeline to do. The names are the <c>--workload</c> values.</summary>
public enum WorkloadKind
{
    NoopCpu,
    NoopIo,
    Cpu,
    Io,
}

/// <summary>
/// A fixed workload, so that results compare across runs: every event body is exactly <see cref="EventBytes"/> bytes of
/// JSON, the CPU work is PBKDF2 with a given iteration count, the I/O work a webhook answered after a given delay.
/// </summary>
public sealed record Workload(WorkloadKind Kind, int Iterations, int DelayMs)
{
    /// <summary>The size of one serialized event in a submission (≈ 600 bytes, as the issue fixes it).</summary>
    public const int EventBytes = 600;

    public string Name => Kind switch
    {
        WorkloadKind.NoopCpu => "noop-cpu",
        WorkloadKind.NoopIo => "noop-io",
        WorkloadKind.Cpu => "cpu",
        _ => "io",
    };

    /// <summary>The lane the routing table sends this workload's event type to.</summary>
    public string Lane => Kind is WorkloadKind.NoopCpu or WorkloadKind.Cpu ? "cpu" : "io";

    /// <summary>Iteration count 0 means "no work": the CPU workload degrades to <c>noop.cpu</c>, as the issue asks.</summary>
    public string EventType => Kind switch
    {
        WorkloadKind.NoopCpu => "noop.cpu",
        WorkloadKind.NoopIo => "noop.io",
        WorkloadKind.Cpu => Iterations > 0 ? "hash.pbkdf2" : "noop.cpu",
        _ => "webhook.post",
    };

    /// <summary>True when each event reaches the downstream receiver, which can then count duplicate deliveries.</summary>
    public bool DeliversDownstream => EventType == "webhook.post";

    public bool RunsPbkdf2 => EventType == "hash.pbkdf2";

    public static Workload Parse(string name, int iterations, int delayMs) => name switch
    {
        "noop-cpu" => new(WorkloadKind.NoopCpu, 0, 0),
        "noop-io" => new(WorkloadKind.NoopIo, 0, 0),
        "cpu" => new(WorkloadKind.Cpu, iterations, 0),
        "io" => new(WorkloadKind.Io, 0, delayMs),
        _ => throw new ArgumentException($"unknown workload '{name}' (noop-cpu, noop-io, cpu, io)"),
    };

    /// <summary>The <c>data</c> string every event carries; its length pads the event to <see cref="EventBytes"/>.</summary>
    public string Data(string eventId)
    {
        var padding = EventBytes - Serialize(eventId, "").Length;
        return new string('x', Math.Max(0, padding));
    }

    /// <summary>One event object as it appears in <c>POST /events</c> or inside <c>POST /events/batch</c>.</summary>
    public byte[] EventJson(string eventId) => Serialize(eventId, Data(eventId));

    private byte[] Serialize(string eventId, string data)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(EventBytes + 64);
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("id", eventId);
            json.WriteString("type", EventType);
            json.WriteStartObject("payload");
            json.WriteString("data", data);
            if (RunsPbkdf2)
            {
                json.WriteNumber("iterations", Iterations);
            }

            if (DeliversDownstream)
            {
                json.WriteStartObject("simulate");
                json.WriteNumber("delayMs", DelayMs);
                json.WriteEndObject();
            }

            json.WriteEndObject();
            json.WriteEndObject();
        }

        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>
    /// The CPU lane's handler for <c>hash.pbkdf2</c>, without any queue: PBKDF2-HMAC-SHA256 of <c>data</c> with the event id
    /// as salt, 32 bytes (the same computation as Worker.Cpu/Work/CpuWork.cs).
    /// </summary>
    public static string Pbkdf2(string eventId, string data, int iterations) =>
        Convert.ToHexStringLower(Rfc2898DeriveBytes.Pbkdf2(
            Encoding.UTF8.GetBytes(data), Encoding.UTF8.GetBytes(eventId), iterations, HashAlgorithmName.SHA256, 32));
}
