using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Cronos;
using StackExchange.Redis;

namespace EventPipeline.Producer.Scheduling;

/// <summary>What happens to the ticks of a schedule that were missed while no scheduler ran.</summary>
public static class MisfirePolicies
{
    /// <summary>Fire once for all the missed ticks (as the earliest missed tick), then go on from now.</summary>
    public const string FireOnce = "fireOnce";

    /// <summary>Fire none of them; go on from now.</summary>
    public const string Skip = "skip";

    public static readonly IReadOnlyList<string> All = [FireOnce, Skip];
}

/// <summary>A periodic schedule as stored: the cron (5 fields, or 6 with seconds first), its time zone and the event each tick submits.</summary>
public sealed record Schedule(
    string Name,
    string Cron,
    string TimeZone,
    JsonElement Event,
    string Misfire,
    bool Paused,
    DateTimeOffset? NextFireAt,
    DateTimeOffset? LastFireAt,
    string? LastEventId,
    DateTimeOffset CreatedAt,
    DateTimeOffset UpdatedAt)
{
    /// <summary>The deterministic id of the event a tick submits: the same tick always names the same event.</summary>
    public static string EventIdOf(string name, DateTimeOffset tick) => $"sched-{name}-{tick.ToUnixTimeMilliseconds()}";

    public static CronExpression? ParseCron(string cron)
    {
        var fields = cron.Split(' ', StringSplitOptions.RemoveEmptyEntries).Length;
        var format = fields switch { 5 => CronFormat.Standard, 6 => CronFormat.IncludeSeconds, _ => (CronFormat?)null };
        return format is { } f && CronExpression.TryParse(cron, f, out var expression) ? expression : null;
    }

    /// <summary>The first occurrence strictly after <paramref name="after"/>, or null when the cron never fires again.</summary>
    public DateTimeOffset? NextAfter(DateTimeOffset after) =>
        ParseCron(Cron)!.GetNextOccurrence(after, TimeZoneInfo.FindSystemTimeZoneById(TimeZone), inclusive: false);
}

/// <summary>
/// Periodic schedules in Redis: a hash per schedule (<c>schedule:{name}</c>) and one sorted set of next fire times
/// (<c>schedules.next</c>, member = name, score = unix ms) that every scheduler reads. The one rule that keeps each tick
/// single: <b>a tick is only moved past by compare-and-set on its own fire time</b>, after its event (with an id derived
/// from name and tick) went through idempotent ingest. Two schedulers that both fire a tick enqueue one event; a
/// scheduler that dies after firing and before advancing leaves the tick to be fired again, which enqueues nothing new.
/// </summary>
public sealed partial class ScheduleStore(IConnectionMultiplexer redis)
{
    public static readonly RedisKey NextFires = "schedules.next";
    private static readonly RedisKey Names = "schedules.names";
    private static readonly RedisKey Alive = "schedules.alive";

    [GeneratedRegex("^[A-Za-z0-9._-]{1,64}$")]
    public static partial Regex NamePattern();

    private static RedisKey Key(string name) => $"schedule:{name}";

    // Moves a schedule from the tick it was at to its next one, only if no one moved it meanwhile. ARGV fired = '1' when
    // the tick's event was submitted (a skipped misfire is not a fire).
    private static readonly LuaScript AdvanceScript = LuaScript.Prepare("""
        local current = redis.call('ZSCORE', @set, @name)
        if not current or tonumber(current) ~= tonumber(@tick) then return 0 end
        if @fired == '1' then
          redis.call('HSET', @key, 'lastTick', @tick, 'lastEventId', @eventId)
        end
        if @next == '' then
          redis.call('ZREM', @set, @name)
          redis.call('HDEL', @key, 'next')
        else
          redis.call('ZADD', @set, @next, @name)
          redis.call('HSET', @key, 'next', @next)
        end
        return 1
        """);

    private IDatabase Db => redis.GetDatabase();

    /// <returns>true when the schedule was new.</returns>
    public async Task<bool> PutAsync(string name, string cron, string timeZone, string eventJson, string misfire, bool paused, DateTimeOffset? next)
    {
        var now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        var transaction = Db.CreateTransaction();
        var created = transaction.HashSetAsync(Key(name), "createdAt", now, When.NotExists);
        _ = transaction.SetAddAsync(Names, name);
        _ = transaction.HashSetAsync(Key(name),
        [
            new("name", name), new("cron", cron), new("timeZone", timeZone), new("event", eventJson), new("misfire", misfire),
            new("paused", paused ? "1" : "0"), new("updatedAt", now), new("next", next?.ToUnixTimeMilliseconds() ?? (RedisValue)""),
        ]);
        _ = paused || next is null
            ? transaction.SortedSetRemoveAsync(NextFires, name)
            : transaction.SortedSetAddAsync(NextFires, name, next.Value.ToUnixTimeMilliseconds());
        await transaction.ExecuteAsync();
        return await created;
    }

    public async Task<Schedule?> GetAsync(string name)
    {
        var fields = await Db.HashGetAllAsync(Key(name));
        return fields.Length == 0 || !fields.Any(f => f.Name == "cron") ? null : Read(fields.ToDictionary(f => f.Name.ToString(), f => f.Value.ToString()));
    }

    public async Task<IReadOnlyList<Schedule>> ListAsync()
    {
        var names = (await Db.SetMembersAsync(Names)).Select(n => n.ToString());
        var schedules = await Task.WhenAll(names.Order(StringComparer.Ordinal).Select(GetAsync));
        return [.. schedules.OfType<Schedule>()];
    }

    public async Task<bool> DeleteAsync(string name)
    {
        var transaction = Db.CreateTransaction();
        var deleted = transaction.KeyDeleteAsync(Key(name));
        _ = transaction.SortedSetRemoveAsync(NextFires, name);
        _ = transaction.SetRemoveAsync(Names, name);
        await transaction.ExecuteAsync();
        return await deleted;
    }

    /// <summary>Pauses (no ticks, nothing counted as missed) or resumes (from the next occurrence after now).</summary>
    public async Task<Schedule?> SetPausedAsync(string name, bool paused)
    {
        if (await GetAsync(name) is not { } schedule)
        {
            return null;
        }

        var next = paused ? null : schedule.NextAfter(DateTimeOffset.UtcNow);
        await PutAsync(name, schedule.Cron, schedule.TimeZone, schedule.Event.GetRawText(), schedule.Misfire, paused, next);
        return await GetAsync(name);
    }

    /// <summary>Records that a scheduler is running now; returns when one last said so before (null: never).</summary>
    public async Task<DateTimeOffset?> MarkAliveAsync(DateTimeOffset now) =>
        (long?)await Db.StringGetSetAsync(Alive, now.ToUnixTimeMilliseconds()) is { } ms ? DateTimeOffset.FromUnixTimeMilliseconds(ms) : null;

    /// <summary>Schedules whose next tick is due (name, tick).</summary>
    public async Task<IReadOnlyList<(string Name, DateTimeOffset Tick)>> DueAsync(DateTimeOffset now, int limit = 100)
    {
        var due = await Db.SortedSetRangeByScoreWithScoresAsync(NextFires, double.NegativeInfinity, now.ToUnixTimeMilliseconds(), take: limit);
        return [.. due.Select(e => (e.Element.ToString(), DateTimeOffset.FromUnixTimeMilliseconds((long)e.Score)))];
    }

    /// <summary>The earliest next tick of any schedule, or null when none is waiting.</summary>
    public async Task<DateTimeOffset?> EarliestAsync()
    {
        var first = await Db.SortedSetRangeByRankWithScoresAsync(NextFires, 0, 0);
        return first.Length == 0 ? null : DateTimeOffset.FromUnixTimeMilliseconds((long)first[0].Score);
    }

    /// <returns>false when another scheduler (or an update of the schedule) moved it first.</returns>
    public async Task<bool> AdvanceAsync(string name, DateTimeOffset tick, bool fired, string eventId, DateTimeOffset? next) =>
        (int)await Db.ScriptEvaluateAsync(AdvanceScript, new
        {
            set = NextFires, key = Key(name), name, tick = tick.ToUnixTimeMilliseconds(), fired = fired ? "1" : "0", eventId,
            next = next?.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture) ?? "",
        }) == 1;

    /// <summary>Removes a due entry whose schedule is gone or paused, only if it still points at that tick.</summary>
    public Task DropAsync(string name, DateTimeOffset tick) => AdvanceAsync(name, tick, false, "", null);

    private static Schedule Read(Dictionary<string, string> f)
    {
        static DateTimeOffset? Time(Dictionary<string, string> f, string name) =>
            long.TryParse(f.GetValueOrDefault(name), out var ms) ? DateTimeOffset.FromUnixTimeMilliseconds(ms) : null;

        using var document = JsonDocument.Parse(f.GetValueOrDefault("event", "{}"));
        return new Schedule(
            f["name"], f["cron"], f.GetValueOrDefault("timeZone", "UTC"), document.RootElement.Clone(),
            f.GetValueOrDefault("misfire", MisfirePolicies.FireOnce), f.GetValueOrDefault("paused") == "1",
            Time(f, "next"), Time(f, "lastTick"), f.GetValueOrDefault("lastEventId") is { Length: > 0 } id ? id : null,
            Time(f, "createdAt") ?? DateTimeOffset.UnixEpoch, Time(f, "updatedAt") ?? DateTimeOffset.UnixEpoch);
    }
}
