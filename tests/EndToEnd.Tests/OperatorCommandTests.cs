using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Aspire.Hosting.Testing;
using EventPipeline.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace EventPipeline.EndToEnd.Tests;

/// <summary>
/// The dashboard's resource commands, executed through Aspire's command service as the dashboard does, with their
/// effect checked through the API: a burst is accepted, a failing event dies, replay sends the lane's dead letters
/// back, delete removes them; every command that changes data asks for confirmation first.
/// </summary>
[Collection(AppHostCollection.Name)]
public sealed class OperatorCommandTests(AppHostFixture fixture)
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(90);

    private HttpClient Admin => field ??= CreateAdmin();

    private HttpClient CreateAdmin()
    {
        var client = fixture.App.CreateHttpClient("producer-api");
        client.DefaultRequestHeaders.Add("X-Api-Key", fixture.AdminKey);
        return client;
    }

    private async Task<JsonElement> ExecuteAsync(string resource, string command)
    {
        using var timeout = new CancellationTokenSource(Deadline);
        var result = await fixture.App.ResourceCommands.ExecuteCommandAsync(resource, command, timeout.Token);
        Assert.True(result.Success, $"{resource}/{command}: {result.Message}");
        Assert.False(string.IsNullOrEmpty(result.Message), $"{resource}/{command} reported no result message");
        Assert.NotNull(result.Data);
        return JsonDocument.Parse(result.Data.Value).RootElement.Clone();
    }

    private async Task<JsonElement> WaitForEventAsync(string id, Func<JsonElement, bool> done, string what) =>
        await Eventually.ReturnsAsync(
            async () =>
            {
                using var response = await Admin.GetAsync($"/events/{id}");
                return response.StatusCode == HttpStatusCode.OK ? await response.Content.ReadFromJsonAsync<JsonElement>() : default;
            },
            status => status.ValueKind == JsonValueKind.Object && done(status),
            Deadline,
            what,
            TimeSpan.FromMilliseconds(250));

    private async Task WaitForDeadLetterAsync(string lane, string id, bool present) =>
        await Eventually.ReturnsAsync(
            async () => (await Admin.GetAsync($"/dead-letters/{lane}/{id}")).StatusCode,
            status => status == (present ? HttpStatusCode.OK : HttpStatusCode.NotFound),
            Deadline,
            $"dead letter {id} {(present ? "in" : "gone from")} the {lane} lane",
            TimeSpan.FromMilliseconds(250));

    [Fact]
    public async Task Burst_command_submits_a_thousand_events_to_the_lane_through_the_api()
    {
        var accepted = await ExecuteAsync("producer-api", OperatorCommands.BurstCommand("io"));

        var events = accepted.GetProperty("events").EnumerateArray().ToList();
        Assert.Equal(OperatorCommands.BurstSize, events.Count);
        Assert.All(events, e => Assert.Equal("io", e.GetProperty("lane").GetString()));
        foreach (var id in new[] { events[0], events[^1] }.Select(e => e.GetProperty("id").GetString()!))
        {
            await WaitForEventAsync(id, s => s.GetProperty("state").GetString() == "succeeded", $"burst event {id} succeeded");
        }
    }

    [Fact]
    public async Task Failing_event_command_dead_letters_it_and_replay_and_delete_commands_act_on_the_lane()
    {
        var submitted = await ExecuteAsync("worker-io", OperatorCommands.FailingEventCommand);
        var id = submitted.GetProperty("id").GetString()!;
        await WaitForEventAsync(id, s => s.GetProperty("state").GetString() == "dead", $"test.fail event {id} dead");
        await WaitForDeadLetterAsync("io", id, present: true);

        var replayed = await ExecuteAsync("producer-api", OperatorCommands.ReplayCommand("io"));
        Assert.True(replayed.GetProperty("replayed").GetInt32() >= 1, replayed.ToString());
        // Back in the lane, it fails again (test.fail always does) and dies a second time.
        await WaitForEventAsync(id, s => s.GetProperty("replays").GetInt32() == 1 && s.GetProperty("state").GetString() == "dead",
            $"test.fail event {id} replayed once and dead again");
        await WaitForDeadLetterAsync("io", id, present: true);

        var deleted = await ExecuteAsync("producer-api", OperatorCommands.DeleteCommand("io"));
        Assert.True(deleted.GetProperty("deleted").GetInt32() >= 1, deleted.ToString());
        await WaitForDeadLetterAsync("io", id, present: false);
        Assert.Equal("dead", (await Admin.GetFromJsonAsync<JsonElement>($"/events/{id}")).GetProperty("state").GetString());
    }

    [Fact]
    public void Every_operator_command_that_changes_data_asks_for_confirmation()
    {
        var model = fixture.App.Services.GetRequiredService<DistributedApplicationModel>();
        var commands = model.Resources
            .SelectMany(r => r.Annotations.OfType<ResourceCommandAnnotation>().Select(c => (Resource: r.Name, Command: c)))
            .Where(c => c.Command.Name.StartsWith("dead-letters-", StringComparison.Ordinal)
                        || c.Command.Name.StartsWith("burst-", StringComparison.Ordinal)
                        || c.Command.Name.StartsWith("test-event-", StringComparison.Ordinal))
            .ToList();

        // Replay, delete and burst for both lanes on the API; both test events on each worker (test events are on here).
        Assert.Equal(6, commands.Count(c => c.Resource == "producer-api"));
        Assert.Equal(2, commands.Count(c => c.Resource == "worker-cpu"));
        Assert.Equal(2, commands.Count(c => c.Resource == "worker-io"));
        Assert.All(commands, c => Assert.False(string.IsNullOrWhiteSpace(c.Command.ConfirmationMessage), $"{c.Resource}/{c.Command.Name}"));
    }
}
