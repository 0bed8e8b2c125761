namespace EventPipeline.Contracts;

/// <summary>
/// An accepted event on its way through the I/O lane (RabbitMQ). The payload travels as the client's JSON text so
/// that no field of it is ever interpreted as a type name.
/// </summary>
public sealed record IoEventSubmitted(string EventId, string Type, string Payload, DateTimeOffset AcceptedAt);

/// <summary>What <c>GET /events/{id}</c> answers.</summary>
public sealed record EventStatus(
    string Id,
    string Type,
    string Lane,
    string State,
    int Attempts,
    string? Error,
    string? Result,
    DateTimeOffset? AcceptedAt,
    DateTimeOffset? StartedAt,
    DateTimeOffset? FinishedAt);
