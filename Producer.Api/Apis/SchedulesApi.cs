using System.Text.Json;
using EventPipeline.Producer.Scheduling;
using EventPipeline.Producer.Security;
using EventPipeline.Producer.Validation;
using EventPipeline.Shared;

namespace EventPipeline.Producer.Apis;

/// <summary>Periodic schedules (admin key): each tick submits one event with an id derived from the schedule's name and tick time.</summary>
public static class SchedulesApi
{
    private const int RetryAfterSeconds = 2;

    /// <summary>Event fields a schedule decides itself: the id (per tick) and the timing.</summary>
    private static readonly string[] ReservedEventFields = ["id", "notBefore", "delay"];

    public static IEndpointRouteBuilder MapSchedulesApi(this IEndpointRouteBuilder app)
    {
        var schedules = app.MapGroup("/schedules").WithTags("Schedules").RequireApiKey(ApiKeyScope.Admin);

        schedules.MapPut("/{name}", PutAsync)
            .WithName("PutSchedule")
            .WithSummary("Create or replace a periodic schedule")
            .WithDescription("`cron` has 5 fields, or 6 with seconds first (`*/10 * * * * *` = every 10 seconds); `timeZone` is an IANA name " +
                             "(default UTC); `misfire` is `fireOnce` (default) or `skip`. Each tick submits `event` once, as `sched-{name}-{tickUnixMs}`.")
            .Accepts<PutScheduleRequest>("application/json")
            .Produces<Schedule>(StatusCodes.Status201Created)
            .Produces<Schedule>()
            .ProducesValidationProblem()
            .ProducesProblem(StatusCodes.Status401Unauthorized)
            .ProducesProblem(StatusCodes.Status403Forbidden)
            .ProducesProblem(StatusCodes.Status503ServiceUnavailable);

        schedules.MapGet("/", async (ScheduleStore store) => TypedResults.Ok(new SchedulesResponse(await store.ListAsync())))
            .WithName("ListSchedules")
            .WithSummary("All schedules with their next and last fire times")
            .Produces<SchedulesResponse>();

        schedules.MapGet("/{name}", async (string name, ScheduleStore store) => await store.GetAsync(name) is { } s ? Results.Ok(s) : NotFound(name))
            .WithName("GetSchedule")
            .WithSummary("One schedule: next and last fire time, last event id")
            .Produces<Schedule>()
            .ProducesProblem(StatusCodes.Status404NotFound);

        schedules.MapDelete("/{name}", async (string name, ScheduleStore store) => await store.DeleteAsync(name) ? Results.NoContent() : NotFound(name))
            .WithName("DeleteSchedule")
            .WithSummary("Delete a schedule (events it already submitted are not touched)")
            .Produces(StatusCodes.Status204NoContent)
            .ProducesProblem(StatusCodes.Status404NotFound);

        schedules.MapPost("/{name}/pause", (string name, ScheduleStore store) => SetPausedAsync(store, name, true))
            .WithName("PauseSchedule")
            .WithSummary("Pause a schedule: no ticks until it is resumed")
            .Produces<Schedule>()
            .ProducesProblem(StatusCodes.Status404NotFound);

        schedules.MapPost("/{name}/resume", (string name, ScheduleStore store) => SetPausedAsync(store, name, false))
            .WithName("ResumeSchedule")
            .WithSummary("Resume a schedule from its next occurrence after now (ticks while paused are not fired)")
            .Produces<Schedule>()
            .ProducesProblem(StatusCodes.Status404NotFound);

        return app;
    }

    private static async Task<IResult> PutAsync(string name, HttpRequest request, ScheduleStore store, EventValidator validator, CancellationToken ct)
    {
        JsonDocument document;
        try
        {
            document = await JsonDocument.ParseAsync(request.Body, default, ct);
        }
        catch (JsonException ex)
        {
            return Problems.Problem(StatusCodes.Status400BadRequest, Problems.MalformedJson, "The body is not valid JSON", ex.Message);
        }

        using (document)
        {
            var errors = new Dictionary<string, string[]>();
            var root = document.RootElement;
            if (!ScheduleStore.NamePattern().IsMatch(name))
            {
                errors["name"] = ["must be 1 to 64 characters from A-Z a-z 0-9 . _ -"];
            }

            if (root.ValueKind != JsonValueKind.Object)
            {
                return Invalid(new() { ["$"] = ["must be an object {\"cron\", \"timeZone\"?, \"misfire\"?, \"event\"}"] });
            }

            var cron = root.TryGetProperty("cron", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString()! : null;
            if (cron is null || Schedule.ParseCron(cron) is null)
            {
                errors["cron"] = ["is required: a cron expression of 5 fields, or 6 with seconds first (e.g. \"0 */5 * * * *\")"];
            }

            var timeZone = "UTC";
            if (root.TryGetProperty("timeZone", out var tz) && tz.ValueKind != JsonValueKind.Null)
            {
                if (tz.ValueKind != JsonValueKind.String || !TimeZoneInfo.TryFindSystemTimeZoneById(tz.GetString()!, out _))
                {
                    errors["timeZone"] = ["must be a known IANA time zone, e.g. \"Europe/Berlin\""];
                }
                else
                {
                    timeZone = tz.GetString()!;
                }
            }

            var misfire = MisfirePolicies.FireOnce;
            if (root.TryGetProperty("misfire", out var m) && m.ValueKind != JsonValueKind.Null)
            {
                if (m.ValueKind != JsonValueKind.String || !MisfirePolicies.All.Contains(m.GetString()))
                {
                    errors["misfire"] = [$"must be one of: {string.Join(", ", MisfirePolicies.All)}"];
                }
                else
                {
                    misfire = m.GetString()!;
                }
            }

            var paused = root.TryGetProperty("paused", out var p) && p.ValueKind == JsonValueKind.True;
            if (!root.TryGetProperty("event", out var e) || e.ValueKind != JsonValueKind.Object)
            {
                errors["event"] = ["is required: the event each tick submits, {\"type\", \"payload\", \"target\"?, \"expiresAt\"?}"];
            }
            else
            {
                foreach (var reserved in ReservedEventFields.Where(f => e.TryGetProperty(f, out _)))
                {
                    errors[$"event.{reserved}"] = ["is decided by the schedule (the id is derived from each tick)"];
                }

                validator.Validate(e, "event", errors);
            }

            if (errors.Count > 0)
            {
                return Invalid(errors);
            }

            try
            {
                var schedule = new Schedule(name, cron!, timeZone, e, misfire, paused, null, null, null, default, default);
                var next = schedule.NextAfter(DateTimeOffset.UtcNow);
                var created = await store.PutAsync(name, cron!, timeZone, e.GetRawText(), misfire, paused, next);
                var stored = await store.GetAsync(name);
                return created ? TypedResults.Created($"/schedules/{name}", stored) : TypedResults.Ok(stored);
            }
            catch (Exception ex) when (RedisFailures.IsOutage(ex))
            {
                // The write may have landed before Redis failed (or failed only its read-back): PUT by name is idempotent.
                return Problems.Unavailable(null, "The schedule store (Redis) is unavailable",
                    $"The schedule may or may not have been saved. Retry the same PUT after the indicated delay (it is idempotent), or read it back with GET /schedules/{name}.",
                    RetryAfterSeconds);
            }
        }
    }

    private static async Task<IResult> SetPausedAsync(ScheduleStore store, string name, bool paused) =>
        await store.SetPausedAsync(name, paused) is { } schedule ? TypedResults.Ok(schedule) : NotFound(name);

    private static IResult Invalid(Dictionary<string, string[]> errors) =>
        TypedResults.ValidationProblem(errors, type: Problems.Validation, title: "The schedule is not valid");

    private static IResult NotFound(string name) =>
        Problems.Problem(StatusCodes.Status404NotFound, Problems.ScheduleNotFound, "No such schedule", $"No schedule '{name}' exists.");
}

public sealed record SchedulesResponse(IReadOnlyList<Schedule> Schedules);

/// <summary>The body of <c>PUT /schedules/{name}</c> (documentation only).</summary>
/// <param name="Cron">5 fields, or 6 with seconds first.</param>
/// <param name="TimeZone">IANA time zone the cron is read in; default UTC.</param>
/// <param name="Misfire"><c>fireOnce</c> (default) or <c>skip</c>: what happens to ticks missed while no API ran.</param>
/// <param name="Event">the event each tick submits: <c>type</c>, <c>payload</c>, optional <c>target</c> and <c>expiresAt</c>.</param>
public sealed record PutScheduleRequest(string Cron, JsonElement Event, string? TimeZone = null, string? Misfire = null, bool Paused = false);
