using EventPipeline.Producer.Ingest;
using EventPipeline.Producer.Validation;
using EventPipeline.Shared;
using EventPipeline.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Producer.UnitTests;

/// <summary>
/// The CPU lane's publish against a real redis-server: no worker can ever see a stream entry whose event has no
/// <c>accepted</c> status, also when a write fails half-way through a request's events.
/// </summary>
public sealed class CpuLanePublisherTests : IAsyncLifetime
{
    private RedisServer _redis = null!;
    private ConnectionMultiplexer _connection = null!;

    public async Task InitializeAsync()
    {
        _redis = await RedisServer.StartAsync();
        _connection = await _redis.ConnectAsync();
    }

    public async Task DisposeAsync()
    {
        _connection.Dispose();
        await _redis.DisposeAsync();
    }

    [Fact]
    public async Task An_entry_holds_the_payload_exactly_as_the_client_sent_it()
    {
        var statuses = new EventStatusStore(_connection, Options.Create(new StatusOptions()));
        var replicas = new RedisReplicaAcknowledgement(_connection, Options.Create(new ConfigurationOptions()),
            Options.Create(new IngestOptions()), NullLogger<RedisReplicaAcknowledgement>.Instance);
        var publisher = new CpuLanePublisher(_connection, statuses, replicas);
        var id = $"utf8-{Guid.NewGuid():N}";
        const string payload = """{ "data" : "café \u00e9 \ud83d\ude00 😀", "iterations":1 }""";
        using var body = System.Text.Json.JsonDocument.Parse($$"""{"id":"{{id}}","type":"hash.pbkdf2","payload":{{payload}}}""");
        var validator = new EventValidator(EventRouterTests.Router(), new DownstreamTargets(Options.Create(new DownstreamTargetOptions())));
        var validated = validator.ValidateInBody(body.RootElement, "", []);
        Assert.NotNull(validated);

        await publisher.PublishAsync([validated], DateTimeOffset.UtcNow, CancellationToken.None);

        var entry = (await _connection.GetDatabase().StreamRangeAsync(CpuLaneStreams.Stream)).Single(e => e["id"] == id);
        Assert.Equal(payload, (string?)entry["payload"]);
    }

    [Fact]
    public async Task Cpu_entry_is_never_added_without_its_accepted_status()
    {
        var statuses = new EventStatusStore(_connection, Options.Create(new StatusOptions()));
        var replicas = new RedisReplicaAcknowledgement(_connection, Options.Create(new ConfigurationOptions()),
            Options.Create(new IngestOptions()), NullLogger<RedisReplicaAcknowledgement>.Instance);
        var publisher = new CpuLanePublisher(_connection, statuses, replicas);
        var tag = Guid.NewGuid().ToString("N")[..8];
        ValidatedEvent[] events = [.. Enumerable.Range(0, 3).Select(i => new ValidatedEvent($"half-{tag}-{i}", "noop.cpu", "cpu", "{}"))];
        // The second event's status key holds a string: its status write fails (WRONGTYPE) when it runs.
        var db = _connection.GetDatabase();
        await db.StringSetAsync(EventStatusStore.Key(events[1].Id), "not a status hash");

        var failure = await Assert.ThrowsAsync<BrokerUnavailableException>(() =>
            publisher.PublishAsync(events, DateTimeOffset.UtcNow, CancellationToken.None));

        // The request is answered 503 with every event in doubt …
        Assert.Equal(events.Select(e => e.Id), failure.Uncertain.Select(e => e.Id));
        // … and no entry was added for the event whose status could not be written; every entry there has its status.
        var entries = await db.StreamRangeAsync(CpuLaneStreams.Stream);
        var added = entries.Select(e => (string)e["id"]!).ToList();
        Assert.DoesNotContain(events[1].Id, added);
        foreach (var id in added)
        {
            Assert.Equal("accepted", (string?)await db.HashGetAsync(EventStatusStore.Key(id), "state"));
        }
    }

    private CpuLanePublisher Publisher()
    {
        var statuses = new EventStatusStore(_connection, Options.Create(new StatusOptions()));
        var replicas = new RedisReplicaAcknowledgement(_connection, Options.Create(new ConfigurationOptions()),
            Options.Create(new IngestOptions()), NullLogger<RedisReplicaAcknowledgement>.Instance);
        return new CpuLanePublisher(_connection, statuses, replicas);
    }

    [Fact]
    public async Task An_id_whose_status_exists_gets_no_second_stream_entry_even_past_the_idempotency_guard()
    {
        // The guard's reservation can be gone when a request's script finally runs (its pending TTL expired while the
        // script waited in a backlog, or a failover lost it): the publish itself must not add a second entry.
        var publisher = Publisher();
        var id = $"twice-{Guid.NewGuid():N}";
        await publisher.PublishAsync([new ValidatedEvent(id, "noop.cpu", "cpu", "{}")], DateTimeOffset.UtcNow, CancellationToken.None);
        await publisher.PublishAsync([new ValidatedEvent(id, "hash.pbkdf2", "cpu", "{}")], DateTimeOffset.UtcNow, CancellationToken.None);

        var db = _connection.GetDatabase();
        var entries = (await db.StreamRangeAsync(CpuLaneStreams.Stream)).Count(e => (string?)e["id"] == id);
        Assert.Equal(1, entries);
        Assert.Equal("noop.cpu", (string?)await db.HashGetAsync(EventStatusStore.Key(id), "type"));
    }

    [Fact]
    public async Task A_stream_key_of_the_wrong_type_fails_the_request_before_any_status_is_written()
    {
        var db = _connection.GetDatabase();
        await db.StringSetAsync(CpuLaneStreams.Stream, "not a stream");
        try
        {
            var id = $"wrongtype-{Guid.NewGuid():N}";
            await Assert.ThrowsAsync<BrokerUnavailableException>(() =>
                Publisher().PublishAsync([new ValidatedEvent(id, "noop.cpu", "cpu", "{}")], DateTimeOffset.UtcNow, CancellationToken.None));
            // No status without its entry: a retry after the repair is a new event, not a repeat of one that never ran.
            Assert.False(await db.KeyExistsAsync(EventStatusStore.Key(id)));
        }
        finally
        {
            await db.KeyDeleteAsync(CpuLaneStreams.Stream);
        }
    }
}
