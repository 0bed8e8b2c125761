namespace EventPipeline.Contracts;

/// <summary>The two lanes an event can travel. The names are part of the public API (<c>GET /lanes</c>, metrics labels).</summary>
public static class Lanes
{
    public const string Cpu = "cpu";
    public const string Io = "io";

    public static readonly IReadOnlyList<string> All = [Cpu, Io];
}

/// <summary>The life of an event as <c>GET /events/{id}</c> reports it.</summary>
public static class EventStates
{
    /// <summary>Held until its <c>notBefore</c>: not in a lane yet, occupies no worker.</summary>
    public const string Scheduled = "scheduled";
    public const string Accepted = "accepted";
    public const string Processing = "processing";
    public const string Retrying = "retrying";
    public const string Succeeded = "succeeded";
    public const string Dead = "dead";

    /// <summary>Not started before its <c>expiresAt</c>: never run, and not a dead letter.</summary>
    public const string Expired = "expired";

    /// <summary>Cancelled before it started (<c>POST /events/{id}/cancel</c>): never run.</summary>
    public const string Cancelled = "cancelled";
}

/// <summary>Event types the pipeline knows. The routing table in configuration maps them to lanes.</summary>
public static class EventTypes
{
    public const string Pbkdf2 = "hash.pbkdf2";
    public const string WebhookPost = "webhook.post";
    public const string NoopCpu = "noop.cpu";
    public const string NoopIo = "noop.io";

    /// <summary>Always throws. Accepted only with <c>TestEvents:Enabled=true</c>.</summary>
    public const string TestFail = "test.fail";

    /// <summary>Ends the worker process. Accepted only with <c>TestEvents:Enabled=true</c>.</summary>
    public const string TestCrash = "test.crash";

    public static bool IsTestType(string type) => type is TestFail or TestCrash;
}
