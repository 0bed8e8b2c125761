namespace EventPipeline.Contracts;

/// <summary>
/// An accepted event on its way through the I/O lane (RabbitMQ). The payload travels as the client's JSON text so
/// that no field of it is ever interpreted as a type name. <see cref="Target"/> is the optional delivery URL the API
/// already checked against its allow-list of downstream hosts (null: the worker's configured downstream).
/// </summary>
public sealed record IoEventSubmitted(string EventId, string Type, string Payload, DateTimeOffset AcceptedAt, string? Target = null);

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
    DateTimeOffset? FinishedAt,
    int Replays = 0,
    DateTimeOffset? ReplayedAt = null,
    DateTimeOffset? NotBefore = null,
    DateTimeOffset? ExpiresAt = null,
    DateTimeOffset? CancelledAt = null,
    DateTimeOffset? ExpiredAt = null);
