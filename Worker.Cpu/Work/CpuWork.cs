using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using EventPipeline.Contracts;
using Microsoft.Extensions.Options;

namespace EventPipeline.Worker.Cpu.Work;

/// <summary>An event that can never succeed (bad payload, unknown type): dead-lettered without further attempts.</summary>
public sealed class PermanentEventException(string message) : Exception(message);

/// <summary>Thrown by <c>test.fail</c>: the failure a test asks for.</summary>
public sealed class RequestedTestFailureException() : Exception("test.fail: this event always fails");

public sealed class TestEventsOptions
{
    public bool Enabled { get; set; }
}

/// <summary>The CPU-bound work of each event type. Runs on a handler thread, never on the reading loop.</summary>
public sealed class CpuWork(IOptions<TestEventsOptions> testEvents)
{
    // test.fail's optional payload.failTimes counts runs per event id in this process, so a test can see a
    // dead-lettered event succeed once it is replayed (see docs/api.md, "Test events").
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, int> _testRuns = new(StringComparer.Ordinal);

    /// <summary>Runs the event and returns its result (stored in the status, keyed by the event id).</summary>
    public string Run(string eventId, string type, string payload)
    {
        switch (type)
        {
            case EventTypes.Pbkdf2:
                return Pbkdf2(eventId, payload);
            case EventTypes.NoopCpu:
                return "";
            case EventTypes.TestFail when testEvents.Value.Enabled:
                if (TestFailTimes(payload) is { } failTimes && _testRuns.AddOrUpdate(eventId, 1, (_, runs) => runs + 1) > failTimes)
                {
                    return $"test.fail: succeeded after {failTimes} failures";
                }

                throw new RequestedTestFailureException();
            case EventTypes.TestCrash when testEvents.Value.Enabled:
                // Ends the process without any cleanup: exactly what a segfault or OOM kill does to the lane.
                Environment.FailFast($"test.crash event {eventId}");
                return "";
            default:
                throw new PermanentEventException($"The CPU lane has no handler for event type '{type}'.");
        }
    }

    private static int? TestFailTimes(string payload)
    {
        try
        {
            using var document = JsonDocument.Parse(payload);
            return document.RootElement.TryGetProperty("failTimes", out var n) && n.ValueKind == JsonValueKind.Number && n.TryGetInt32(out var times) ? times : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>
    /// PBKDF2-HMAC-SHA256 of <c>payload.data</c> (UTF-8) with the event id (UTF-8) as salt, 32 bytes, lower-case hex.
    /// </summary>
    public static string Pbkdf2(string eventId, string payload)
    {
        string data;
        int iterations;
        try
        {
            using var document = JsonDocument.Parse(payload);
            data = document.RootElement.GetProperty("data").GetString() ?? throw new PermanentEventException("payload.data is null");
            iterations = document.RootElement.GetProperty("iterations").GetInt32();
        }
        catch (Exception ex) when (ex is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new PermanentEventException($"hash.pbkdf2 payload is invalid: {ex.Message}");
        }

        if (iterations < 1)
        {
            throw new PermanentEventException("payload.iterations must be at least 1");
        }

        var hash = Rfc2898DeriveBytes.Pbkdf2(Encoding.UTF8.GetBytes(data), Encoding.UTF8.GetBytes(eventId), iterations, HashAlgorithmName.SHA256, 32);
        return Convert.ToHexStringLower(hash);
    }
}
