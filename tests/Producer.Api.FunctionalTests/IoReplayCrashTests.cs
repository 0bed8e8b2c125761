using System.Net;
using EventPipeline.Testing;
using StackExchange.Redis;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// An I/O replay is safe to die in at any step: an API killed while the replayed copy is on its way to the lane leaves
/// the event <c>dead</c> (its dead letter still listed, or its copy in the lane), never <c>accepted</c> with no copy
/// anywhere. Found by review: the replay wrote <c>accepted</c> before it published.
/// </summary>
public sealed class IoReplayCrashTests : IAsyncLifetime
{
    private PipelineHost _host = null!;

    public async Task InitializeAsync() => _host = await PipelineHost.StartAsync();

    public async Task DisposeAsync() => await _host.DisposeAsync();

    [Fact]
    public async Task Api_killed_while_a_replayed_copy_is_being_published_leaves_the_event_dead_not_accepted()
    {
        // The API declares the I/O lane's queue on its first publish: a replay needs it (mandatory publish).
        Assert.Equal(HttpStatusCode.Accepted, (await _host.Submit.PostAsync("/events",
            new StringContent("""{"type":"noop.io","payload":{}}""", System.Text.Encoding.UTF8, "application/json"))).StatusCode);
        await using var redis = await _host.Redis.ConnectAsync();
        var db = redis.GetDatabase();
        var id = "replay-crash-" + Guid.NewGuid().ToString("N");
        await IoDeadLetterInjection.InjectAsync(_host, db, id);

        // A memory alarm blocks every connection that publishes, while reads (basic.get) go on: the replay finds its
        // dead letter and then waits in the publish of its copy.
        await _host.Rabbit.CtlAsync("set_vm_memory_high_watermark", "absolute", "1");
        Task<HttpResponseMessage> replay;
        try
        {
            replay = _host.Admin.PostAsync($"/dead-letters/io/{id}/replay", null);
            await Eventually.TrueAsync(async () => (await _host.Rabbit.CtlAsync("list_connections", "state")).Contains("blocked", StringComparison.Ordinal),
                TimeSpan.FromSeconds(30), "the replay's publish to be blocked", TimeSpan.FromMilliseconds(200));
            await _host.Api.KillAsync();
        }
        finally
        {
            await _host.Rabbit.CtlAsync("set_vm_memory_high_watermark", "0.4");
        }

        await Assert.ThrowsAnyAsync<Exception>(() => replay); // the API died under the request
        var state = (string?)await db.HashGetAsync($"event:{id}", "state");
        Assert.True(state == "dead", $"the API died mid-replay and {id} now reads '{state}', with no worker-side write to come");
    }
}
