using System.Globalization;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using Aspire.Hosting.ApplicationModel;

namespace Aspire.Hosting;

/// <summary>
/// What an operator does from the dashboard, as resource commands that call the API over HTTP with the admin key, just
/// as a person with curl would: replay or delete a lane's dead letters (bounded by <see cref="BulkBound"/>, the API's own
/// default), send a sample burst, and — only with test events enabled — the "break it on purpose" events. Every
/// command that changes data asks first, and every command answers with what the API reported.
/// </summary>
public static class OperatorCommands
{
    public const int BulkBound = 1000;
    public const int BurstSize = 1000;

    private static readonly (string Lane, string Title)[] Lanes = [("cpu", "CPU"), ("io", "I/O")];

    public static string ReplayCommand(string lane) => $"dead-letters-{lane}-replay";

    public static string DeleteCommand(string lane) => $"dead-letters-{lane}-delete";

    public static string BurstCommand(string lane) => $"burst-{lane}";

    public const string FailingEventCommand = "test-event-fail";
    public const string CrashingEventCommand = "test-event-crash";

    /// <summary>Dead-letter and burst commands of both lanes, on the API resource.</summary>
    public static IResourceBuilder<ProjectResource> WithOperatorCommands(this IResourceBuilder<ProjectResource> api, IResourceBuilder<ParameterResource> adminKey)
    {
        foreach (var (lane, title) in Lanes)
        {
            api.WithApiCommand(api, adminKey, ReplayCommand(lane), $"Replay {title} dead letters",
                HttpMethod.Post, $"/dead-letters/{lane}/replay", $"max={BulkBound}", body: null,
                confirmation: $"Send up to {BulkBound:N0} dead letters of the {title} lane back to it, oldest first? Each event runs again with fresh attempts.",
                icon: "ArrowRepeatAll",
                describe: json => $"Replayed {json["replayed"]} {title} dead letter(s); {json["alreadySucceeded"]} dropped as already succeeded; {Remaining(json)}.");

            api.WithApiCommand(api, adminKey, DeleteCommand(lane), $"Delete {title} dead letters",
                HttpMethod.Delete, $"/dead-letters/{lane}", $"max={BulkBound}", body: null,
                confirmation: $"Delete up to {BulkBound:N0} dead letters of the {title} lane for good, oldest first? Their events stay dead and cannot be replayed any more.",
                icon: "Delete",
                describe: json => $"Deleted {json["deleted"]} {title} dead letter(s); {Remaining(json)}.");

            api.WithApiCommand(api, adminKey, BurstCommand(lane), $"Send {BurstSize:N0} {title} events",
                HttpMethod.Post, "/events/batch", query: null, body: () => SampleBurst(lane),
                confirmation: $"Submit a burst of {BurstSize:N0} sample events to the {title} lane (watch depth and lag in GET /lanes and Prometheus)?",
                icon: "Flash",
                describe: json => $"{json["events"]?.AsArray().Count} {title} events accepted.");
        }

        return api;
    }

    /// <summary>
    /// "Break it on purpose" on the worker that runs the lane: an event that always fails (retried, then dead-lettered)
    /// and one that kills the worker each time it runs (the lane caps its deliveries and dead-letters it). Sent
    /// through the API, which accepts them only with <c>TestEvents:Enabled</c>, the only case these are added in.
    /// </summary>
    public static IResourceBuilder<ProjectResource> WithTestEventCommands(this IResourceBuilder<ProjectResource> worker, string lane,
        IResourceBuilder<ProjectResource> api, IResourceBuilder<ParameterResource> adminKey)
    {
        var title = Lanes.Single(l => l.Lane == lane).Title;
        worker.WithApiCommand(api, adminKey, FailingEventCommand, "Send an always-failing event",
            HttpMethod.Post, "/events", query: null, body: () => new JsonObject { ["type"] = "test.fail", ["payload"] = new JsonObject { ["lane"] = lane } },
            confirmation: $"Submit a test.fail event to the {title} lane? It fails every attempt and ends as a dead letter.",
            icon: "ErrorCircle",
            describe: json => $"Submitted always-failing event {json["id"]} to the {title} lane.");

        worker.WithApiCommand(api, adminKey, CrashingEventCommand, "Send a crash-looping event",
            HttpMethod.Post, "/events", query: null, body: () => new JsonObject { ["type"] = "test.crash", ["payload"] = new JsonObject { ["lane"] = lane } },
            confirmation: $"Submit a test.crash event to the {title} lane? {worker.Resource.Name} dies each time it runs it, until the lane caps its deliveries and dead-letters it.",
            icon: "Warning",
            describe: json => $"Submitted crash-looping event {json["id"]} to the {title} lane.");
        return worker;
    }

    // The API answers remaining: null when the broker gave no count before its scan closed (docs/api.md).
    private static string Remaining(JsonNode json) =>
        json["remaining"] is { } remaining ? $"{remaining} remain" : "the number that remain is unknown (the broker gave no count)";

    private static JsonObject SampleBurst(string lane)
    {
        var events = new JsonArray();
        for (var i = 0; i < BurstSize; i++)
        {
            events.Add(lane == "cpu"
                ? new JsonObject { ["type"] = "hash.pbkdf2", ["payload"] = new JsonObject { ["data"] = $"sample {i}", ["iterations"] = 20_000 } }
                : new JsonObject { ["type"] = "webhook.post", ["payload"] = new JsonObject { ["sample"] = i } });
        }

        return new JsonObject { ["events"] = events };
    }

    private static IResourceBuilder<T> WithApiCommand<T>(this IResourceBuilder<T> resource, IResourceBuilder<ProjectResource> api,
        IResourceBuilder<ParameterResource> adminKey, string name, string displayName, HttpMethod method, string path, string? query,
        Func<JsonObject>? body, string confirmation, string icon, Func<JsonNode, string> describe) where T : IResourceWithEndpoints
    {
        var endpoint = api.GetEndpoint("http");
        return resource.WithHttpCommand(path, displayName, endpointSelector: () => endpoint, commandName: name, commandOptions: new HttpCommandOptions
        {
            Method = method,
            ConfirmationMessage = confirmation,
            IconName = icon,
            Description = confirmation,
            // On the API, Aspire's default (enabled while it runs). On a worker, always: sending a test event to a
            // stopped or crashed worker's lane is a fair thing to do, and the command reports it if the API is down.
            UpdateState = ReferenceEquals(resource.Resource, api.Resource) ? null : _ => ResourceCommandState.Enabled,
            PrepareRequest = async context =>
            {
                if (query is not null && context.Request.RequestUri is { } uri)
                {
                    // The command's path is a path: a query given there would be escaped into it.
                    context.Request.RequestUri = new UriBuilder(uri) { Query = query }.Uri;
                }

                context.Request.Headers.Add("X-Api-Key", await adminKey.Resource.GetValueAsync(context.CancellationToken));
                if (body is not null)
                {
                    context.Request.Content = JsonContent.Create(body());
                }
            },
            GetCommandResult = async context =>
            {
                var text = await context.Response.Content.ReadAsStringAsync(context.CancellationToken);
                JsonNode? json = null;
                try
                {
                    json = text.Length > 0 ? JsonNode.Parse(text) : null;
                }
                catch (JsonException)
                {
                    // Not JSON (a proxy's error page): reported as text below.
                }

                if (!context.Response.IsSuccessStatusCode)
                {
                    var detail = json?["detail"]?.GetValue<string>() ?? json?["title"]?.GetValue<string>() ?? text;
                    return CommandResults.Failure(
                        string.Create(CultureInfo.InvariantCulture, $"{(int)context.Response.StatusCode} {context.Response.ReasonPhrase}: {detail}"),
                        text, CommandResultFormat.Json);
                }

                return json is null
                    ? CommandResults.Success()
                    : CommandResults.Success(describe(json), text, CommandResultFormat.Json);
            },
        });
    }
}
