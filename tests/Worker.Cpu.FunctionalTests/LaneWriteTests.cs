using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using EventPipeline.Worker.Cpu.Lane;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using StackExchange.Redis;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

/// <summary>
/// The lane's status writes cost Redis round trips, not one per event: the starts of entries taken up together share
/// a script, and while other entries wait for a core, the successes of jobs that finish one at a time share one too
/// (Worker.Cpu/Lane/LaneWriter.cs) — without changing what each entry's status says or when it is acknowledged.
/// </summary>
[Collection(CpuLaneCollection.Name)]
public sealed class LaneWriteTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Starts_and_successes_of_a_backlog_share_scripts_and_each_status_change_is_one_read_and_one_write()
    {
        const int events = 200;
        const int iterations = 2_000; // short jobs that still finish one at a time on one core
        await using var lane = await CpuLaneHarness.StartAsync();
        await using var monitor = await RedisMonitor.StartAsync(lane.Redis);
        var ids = Enumerable.Range(0, events).Select(i => $"shared-{i}-{Guid.NewGuid():N}").ToArray();
        // A backlog before the worker starts: every read brings many entries, and one core works through them.
        await lane.EnqueueAsync([.. ids.Select(id => (id, "hash.pbkdf2", (object)new { data = Bursts.DataOf(id), iterations }))]);
        // Counted from a marker, not from Lines.Count: the enqueue's own lines may still be on their way to the monitor.
        var seenOnReturn = monitor.Lines.Count;
        var skip = await monitor.CountThroughNowAsync(lane.Db);
        var late = monitor.Lines.Skip(seenOnReturn).Take(skip - 1 - seenOnReturn).ToList();
        output.WriteLine($"{late.Count} MONITOR lines arrived between the enqueue's return and the marker (counted as the lane's before; the marker's own SELECT among them): "
            + string.Join(", ", late.GroupBy(l => (l.Contains(" lua] ", StringComparison.Ordinal) ? "lua " : "") + Described(l)).Select(g => $"{g.Key} × {g.Count()}")));
        // A claim timeout of a minute: the ownership heartbeat (every third of it, one XPENDING per held entry) then
        // stays out of the XPENDING count below however long the drain takes on a busy machine.
        await lane.StartWorkerAsync(new Dictionary<string, string?> { ["CpuLane__Handlers"] = "1", ["CpuLane__ClaimTimeout"] = "00:01:00" });
        var drain = System.Diagnostics.Stopwatch.StartNew();

        await Eventually.TrueAsync(async () => await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream) == 0, Patience,
            "the backlog to be acknowledged", TimeSpan.FromMilliseconds(100));
        output.WriteLine($"drained {drain.Elapsed.TotalSeconds:F2} s after the worker was ready");

        var outcomes = await lane.ReadAsync(ids);
        Assert.Equal([], outcomes.Where(o => o.Value.State != "succeeded" || o.Value.Completions != 1).Select(o => $"{o.Key}: {o.Value.State} × {o.Value.Completions}"));
        Assert.Equal([], outcomes.Where(o => o.Value.Result != Bursts.ExpectedPbkdf2(o.Key, iterations)).Select(o => o.Key));
        // Every entry was charged exactly one run and its charge went with its acknowledgement.
        Assert.Equal(events, monitor.LinesAfter(skip).Count(line => line.Contains($"\"HINCRBY\" \"{CpuLaneStreams.Started}\"", StringComparison.OrdinalIgnoreCase)));
        Assert.Equal(0, await lane.Db.HashLengthAsync(CpuLaneStreams.Started));

        // The scripts that start entries or record successes name the run-charge hash among their keys.
        var laneScripts = monitor.LinesAfter(skip).Count(line =>
            (line.Contains("] \"EVALSHA\"", StringComparison.OrdinalIgnoreCase) || line.Contains("] \"EVAL\"", StringComparison.OrdinalIgnoreCase))
            && line.Contains($"\"{CpuLaneStreams.Started}\"", StringComparison.Ordinal));
        output.WriteLine($"{laneScripts} start/success scripts for {events} events");
        // One start and one success script per event would be 2 × events; shared, they are a fraction of one per event.
        Assert.True(laneScripts <= events / 2, $"{laneScripts} start/success scripts for {events} events: the writes were not shared");

        // Inside Redis, each status change (the start's move to processing, the success) is paid per event: one read and
        // one write of the status hash plus its EXPIRE, not a command per field (Pipeline.Shared/EventStatusStore.cs).
        // Asserted per event and per command, so that a failure names the events and the commands that were extra.
        var statusLines = monitor.LinesAfter(skip).Where(line => line.Contains(" lua] ", StringComparison.Ordinal) && line.Contains("\"event:shared-", StringComparison.Ordinal)).ToList();
        output.WriteLine("status-hash commands by name (and state written): " + string.Join(", ", statusLines.GroupBy(Described).OrderBy(g => g.Key).Select(g => $"{g.Key} × {g.Count()}")));
        output.WriteLine($"{statusLines.Count} commands on the events' status hashes for {events} events = {statusLines.Count / (double)events:F2} per event");
        var perEvent = statusLines.GroupBy(KeyOf).ToDictionary(g => g.Key, g => g.GroupBy(CommandOf).ToDictionary(c => c.Key, c => c.Count()));
        var expected = new Dictionary<string, int> { ["HMGET"] = 2, ["HSET"] = 2, ["EXPIRE"] = 2 };
        var extra = perEvent.Where(e => e.Value.Any(c => c.Value > expected.GetValueOrDefault(c.Key))).ToList();
        foreach (var (key, commands) in extra.Take(5))
        {
            output.WriteLine($"{key}: " + string.Join(", ", statusLines.Where(l => KeyOf(l) == key).Select(Described)));
        }

        Assert.True(extra.Count == 0, $"{extra.Count} events' status hashes saw more than one HMGET, HSET and EXPIRE per status change (start, success), e.g. "
            + string.Join("; ", extra.Take(3).Select(e => $"{e.Key}: {string.Join(", ", e.Value.Select(c => $"{c.Key} × {c.Value}"))}")));

        // Whether this consumer still holds each entry is read once per script for the whole batch (one XPENDING over
        // its id range), not once per start and per success; the heartbeat's (every 20 s here) add at most a few.
        var pendingChecks = monitor.LinesAfter(skip).Count(line => line.Contains(" lua] \"XPENDING\"", StringComparison.OrdinalIgnoreCase));
        output.WriteLine($"{pendingChecks} XPENDING in scripts for {events} events and {laneScripts} lane scripts");
        Assert.True(pendingChecks <= laneScripts + 20, $"the lane's scripts ran {pendingChecks} XPENDING for {events} events in {laneScripts} scripts: the ownership check was read per entry");

        // That read is bounded by the script's batch, not by everything this consumer holds between the batch's ids
        // (read ahead, started, successes queued): at most 4 rows per entry of the script, and 64 at least. A MONITOR
        // feed lists a script's call before the commands it ran.
        var entriesOfScript = 0;
        var unbounded = new List<string>();
        foreach (var line in monitor.LinesAfter(skip))
        {
            var arguments = ArgumentsOf(line);
            if (CommandOf(line) is "EVALSHA" or "EVAL" && !line.Contains(" lua] ", StringComparison.Ordinal) && arguments.Length > 2)
            {
                entriesOfScript = line.Contains($"\"{CpuLaneStreams.Started}\"", StringComparison.Ordinal) ? int.Parse(arguments[2]) - 2 : 0;
            }
            else if (line.Contains(" lua] ", StringComparison.Ordinal) && CommandOf(line) == "XPENDING" && entriesOfScript > 0
                && arguments.Length >= 7 && arguments[3] != arguments[4] && int.Parse(arguments[5]) > Math.Max(64, 4 * entriesOfScript))
            {
                unbounded.Add($"COUNT {arguments[5]} for {entriesOfScript} entries");
            }
        }

        Assert.True(unbounded.Count == 0, $"{unbounded.Count} lane scripts read up to more pending entries than 4 per entry of their batch (and 64): {string.Join("; ", unbounded.Distinct().Take(5))}");
    }

    /// <summary>The command and its arguments of a MONITOR line (<c>1700000000.000000 [0 lua] "HSET" "key" ...</c>).</summary>
    private static string[] ArgumentsOf(string monitorLine)
    {
        var at = monitorLine.IndexOf("] \"", StringComparison.Ordinal);
        return at < 0 ? [] : [.. monitorLine[(at + 2)..].Split("\" \"").Select(a => a.Trim('"'))];
    }

    private static string CommandOf(string monitorLine) => ArgumentsOf(monitorLine) is [var command, ..] ? command.ToUpperInvariant() : "?";

    private static string KeyOf(string monitorLine) => ArgumentsOf(monitorLine) is [_, var key, ..] ? key : "?";

    /// <summary>The command, and for an HSET the state it writes (accepted, processing, succeeded), if any.</summary>
    private static string Described(string monitorLine)
    {
        var arguments = ArgumentsOf(monitorLine);
        var state = Array.IndexOf(arguments, "state");
        return CommandOf(monitorLine) + (CommandOf(monitorLine) == "HSET" && state > 1 && state + 1 < arguments.Length ? " " + arguments[state + 1] : "");
    }

    [Fact]
    public async Task A_consumer_holding_more_than_a_scripts_read_still_starts_and_acknowledges_each_entry_exactly_once()
    {
        // A lane script learns which of its batch's entries this consumer holds from one XPENDING over the batch's id
        // range, capped at 4 rows per entry and 64 at least; between the batch's ids the consumer can hold far more
        // (read ahead, started, successes queued), and then each id of the batch not on the full page is asked for by
        // itself (Worker.Cpu/Lane/LaneWriter.cs). A worker process reaches that only when scheduling makes its batches
        // small while it holds much (a CI run never did), so the writer is driven here directly, against this test's
        // redis-server, with a batch whose page is full by construction: three entries (a cap of 64 rows) spanning the
        // 299 entries this consumer holds, one of the three held by another consumer.
        const int events = 300;
        await using var lane = await CpuLaneHarness.StartAsync();
        await using var monitor = await RedisMonitor.StartAsync(lane.Redis);
        var ids = Enumerable.Range(0, events).Select(i => $"held-{i}-{Guid.NewGuid():N}").ToArray();
        await lane.EnqueueAsync([.. ids.Select(id => (id, "noop.cpu", (object)new { }))]);
        await lane.Db.StreamCreateConsumerGroupAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, StreamPosition.Beginning);

        var options = Options.Create(new CpuLaneOptions { Handlers = 1, WriteLinger = TimeSpan.Zero });
        var buffer = new LaneBuffer(options, new StartedBound(options, NullLogger<StartedBound>.Instance));
        var consumer = buffer.ConsumerName;
        var ours = (await lane.Db.StreamReadGroupAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, consumer, StreamPosition.NewMessages, 150)).ToList();
        var others = await lane.Db.StreamReadGroupAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, "other", StreamPosition.NewMessages, 1);
        ours.AddRange(await lane.Db.StreamReadGroupAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, consumer, StreamPosition.NewMessages, events));
        Assert.Equal((events - 1, 1), (ours.Count, others.Length));
        var first = LaneEntry.Parse(ours[0]);
        var theOthers = LaneEntry.Parse(others[0]);
        var last = LaneEntry.Parse(ours[^1]);
        LaneEntry[] batch = [first, theOthers, last];
        var names = new Dictionary<string, string>
        {
            [first.EntryId.ToString()] = "the first entry",
            [theOthers.EntryId.ToString()] = "the other consumer's entry",
            [last.EntryId.ToString()] = "the last entry",
        };
        var heldInRange = (await lane.Db.StreamPendingMessagesAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, 10 * events, consumer, first.EntryId, last.EntryId)).Length;
        Assert.Equal(events - 1, heldInRange);

        // Starts, then successes, each batch one script: every write is queued before the writer runs (and no more can
        // come, Complete), so its first batch takes them all.
        var writer = new LaneWriter(lane.Db.Multiplexer, lane.Statuses, buffer, options, NullLogger<LaneWriter>.Instance);
        var starts = batch.Select(writer.StartAsync).ToArray();
        writer.Complete();
        var beforeStarts = await monitor.CountThroughNowAsync(lane.Db);
        await writer.RunAsync(() => false).WaitAsync(Patience);
        var started = await Task.WhenAll(starts).WaitAsync(Patience);
        var charged = (await lane.Db.HashGetAllAsync(CpuLaneStreams.Started)).ToDictionary(e => e.Name.ToString(), e => (long)e.Value);

        var successWriter = new LaneWriter(lane.Db.Multiplexer, lane.Statuses, buffer, options, NullLogger<LaneWriter>.Instance);
        var successes = batch.Select(e => successWriter.SucceededAsync(e, "done")).ToArray();
        successWriter.Complete();
        var beforeSuccesses = await monitor.CountThroughNowAsync(lane.Db);
        await successWriter.RunAsync(() => false).WaitAsync(Patience);
        await Task.WhenAll(successes).WaitAsync(Patience);
        var afterSuccesses = await monitor.CountThroughNowAsync(lane.Db);
        var startLines = monitor.Lines.Skip(beforeStarts).Take(beforeSuccesses - beforeStarts).ToList();
        var successLines = monitor.Lines.Skip(beforeSuccesses).Take(afterSuccesses - beforeSuccesses).ToList();

        // What each entry came to, checked in one assertion so that a failure names every entry that went wrong.
        var stillPending = (await lane.Db.StreamPendingMessagesAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, 10 * events, RedisValue.Null, first.EntryId, last.EntryId))
            .ToDictionary(p => p.MessageId.ToString(), p => p.ConsumerName.ToString());
        var statuses = await lane.ReadAsync([.. batch.Select(e => e.Id)]);
        var fates = new List<string>();
        foreach (var (entry, start) in batch.Zip(started))
        {
            var id = entry.EntryId.ToString();
            fates.Add($"{names[id]}: start answered {start}, charged {charged.GetValueOrDefault(id)} run(s) by the start script "
                + $"({Count(startLines.Concat(successLines), "HINCRBY", CpuLaneStreams.Started.ToString(), id)} HINCRBY in both), "
                + $"acknowledged {successLines.Count(l => IsInScript(l) && CommandOf(l) == "XACK" && ArgumentsOf(l).Skip(3).Contains(id))} time(s), "
                + $"pending to {stillPending.GetValueOrDefault(id, "nobody")}, in the stream {(await lane.Db.StreamRangeAsync(CpuLaneStreams.Stream, id, id)).Length} time(s)");
        }

        fates.ForEach(output.WriteLine);
        var oneStarted = $"start answered {EntryOwnership.Start.Started}, charged 1 run(s) by the start script (1 HINCRBY in both), acknowledged 1 time(s), pending to nobody, in the stream 0 time(s)";
        string[] expected =
        [
            $"the first entry: {oneStarted}",
            $"the other consumer's entry: start answered {EntryOwnership.Start.ClaimedByAnother}, charged 0 run(s) by the start script (0 HINCRBY in both), acknowledged 0 time(s), pending to other, in the stream 1 time(s)",
            $"the last entry: {oneStarted}",
        ];
        var wrong = fates.Zip(expected).Where(f => f.First != f.Second).Select(f => $"{f.First} (expected: {f.Second[(f.Second.IndexOf(':') + 2)..]})").ToList();
        Assert.True(wrong.Count == 0, string.Join("; ", wrong));
        Assert.Equal(0, await lane.Db.HashLengthAsync(CpuLaneStreams.Started));
        Assert.Equal(
            [("succeeded", 1L, "processing → succeeded"), ("succeeded", 1L, "processing → succeeded")],
            new[] { first, last }.Select(e => (statuses[e.Id].State, statuses[e.Id].Completions, StateChanges(startLines.Concat(successLines), e.Id))));

        // The premise, from what Redis ran: each batch was one script whose ranged read was capped below what this
        // consumer holds in its range, and the ids not on that full page (the other's, the last) were asked for by
        // themselves — the only way the last entry was found held above.
        foreach (var (phase, lines) in new[] { ("starts", startLines), ("successes", successLines) })
        {
            var reads = lines.Where(l => IsInScript(l) && CommandOf(l) == "XPENDING").Select(ArgumentsOf).ToList();
            var ranged = reads.Where(a => a.Length >= 7 && a[3] != a[4]).ToList();
            var byId = reads.Where(a => a.Length >= 7 && a[3] == a[4] && a[5] == "1").Select(a => names.GetValueOrDefault(a[3], a[3])).ToList();
            output.WriteLine($"{phase}: ranged reads (COUNT) {string.Join(", ", ranged.Select(a => a[5]))}; checked by id: {string.Join(", ", byId)}");
            Assert.True(ranged.Count == 1, $"the {phase} went in {ranged.Count} ranged XPENDING reads, not one script's");
            Assert.True(int.Parse(ranged[0][5]) < heldInRange, $"the {phase}' ranged read asked for {ranged[0][5]} rows of the {heldInRange} held in its range: its page was not full");
            Assert.Equal(["the last entry", "the other consumer's entry"], byId.Order(StringComparer.Ordinal));
        }
    }

    /// <summary>Whether a MONITOR line is a command a script ran.</summary>
    private static bool IsInScript(string monitorLine) => monitorLine.Contains(" lua] ", StringComparison.Ordinal);

    /// <summary>How many of <paramref name="lines"/> ran a command with exactly these leading arguments.</summary>
    private static int Count(IEnumerable<string> lines, params string[] commandAndArguments) =>
        lines.Count(l => ArgumentsOf(l).Take(commandAndArguments.Length).SequenceEqual(commandAndArguments, StringComparer.OrdinalIgnoreCase));

    /// <summary>The states written to an event's status hash, in order (e.g. <c>processing → succeeded</c>).</summary>
    private static string StateChanges(IEnumerable<string> lines, string eventId) =>
        string.Join(" → ", lines.Where(l => CommandOf(l) == "HSET" && KeyOf(l) == EventStatusStore.Key(eventId).ToString())
            .Select(l => ArgumentsOf(l) is var a && Array.IndexOf(a, "state") is var i and > 1 && i + 1 < a.Length ? a[i + 1] : "?"));

    [Fact]
    public async Task Successes_wait_for_company_only_while_other_entries_wait_for_a_core()
    {
        const int events = 40;
        const int iterations = 20_000; // milliseconds each: alone, every success would be written by itself
        await using var lane = await CpuLaneHarness.StartAsync();
        await using var monitor = await RedisMonitor.StartAsync(lane.Redis);
        await lane.StartWorkerAsync(new Dictionary<string, string?>
        {
            ["CpuLane__Handlers"] = "1",
            // The longest allowed (1 s): sharing shows however slow the machine is, and a lone success that waited for it
            // stands clear of the bound below on a loaded machine (it was 500 ms against a 400 ms bound).
            ["CpuLane__WriteLinger"] = "00:00:01",
        });

        // A quiet lane: nothing waits for a core, so a success is written at once, not after the linger. Measured on
        // the second lone event: the first one's start → success also pays the worker's JIT of the whole path, which on
        // a loaded machine took longer than the bound (564 ms, with no write lingering).
        var warmUp = $"warm-{Guid.NewGuid():N}";
        await lane.EnqueueAsync((warmUp, "noop.cpu", (object)new { }));
        await lane.WaitForStateAsync(warmUp, "succeeded", Patience);
        var lone = $"lone-{Guid.NewGuid():N}";
        await lane.EnqueueAsync((lone, "noop.cpu", (object)new { }));
        var status = await lane.WaitForStateAsync(lone, "succeeded", Patience);
        var written = long.Parse(status["finishedAt"]) - long.Parse(status["startedAt"]);
        output.WriteLine($"lone event: started → succeeded in {written} ms");
        Assert.True(written < 700, $"a lone event's success was written {written} ms after it started: it waited for company that could not come");

        // A backlog on one core: while entries wait for it, successes of jobs finishing one at a time share a script.
        var skip = await monitor.CountThroughNowAsync(lane.Db);
        var ids = Enumerable.Range(0, events).Select(i => $"linger-{i}-{Guid.NewGuid():N}").ToArray();
        await lane.EnqueueAsync([.. ids.Select(id => (id, "hash.pbkdf2", (object)new { data = Bursts.DataOf(id), iterations }))]);
        await Eventually.TrueAsync(async () => await lane.CountInStateAsync(ids, "succeeded") == events
                && await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream) == 0, Patience,
            "the backlog to succeed and be acknowledged", TimeSpan.FromMilliseconds(100));
        Assert.All((await lane.StatesAsync(ids)).Values, s => Assert.Equal(1, s.Completions));
        var acknowledgements = monitor.LinesAfter(skip).Count(line => line.Contains("\"XACK\"", StringComparison.OrdinalIgnoreCase));
        output.WriteLine($"{acknowledgements} acknowledgements (XACK) for {events} events");
        Assert.True(acknowledgements <= events / 4, $"{acknowledgements} XACKs for {events} events finishing one at a time: their successes were not written together");
    }

    [Fact]
    public async Task A_backlog_is_read_half_a_buffer_at_a_time_not_one_entry_per_freed_slot()
    {
        const int events = 60;
        const int iterations = 20_000; // milliseconds each: slots come free one at a time
        await using var lane = await CpuLaneHarness.StartAsync();
        await using var monitor = await RedisMonitor.StartAsync(lane.Redis);
        var ids = Enumerable.Range(0, events).Select(i => $"read-{i}-{Guid.NewGuid():N}").ToArray();
        await lane.EnqueueAsync([.. ids.Select(id => (id, "hash.pbkdf2", (object)new { data = Bursts.DataOf(id), iterations }))]);
        var skip = await monitor.CountThroughNowAsync(lane.Db);
        // A buffer of 8; no write linger, so each success frees its handler, and a buffer slot, by itself.
        await lane.StartWorkerAsync(new Dictionary<string, string?>
        {
            ["CpuLane__Handlers"] = "1",
            ["CpuLane__MaxStarted"] = "4",
            ["CpuLane__WriteLinger"] = "00:00:00",
        });
        await Eventually.TrueAsync(async () => await lane.CountInStateAsync(ids, "succeeded") == events
                && await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream) == 0, Patience,
            "the backlog to succeed and be acknowledged", TimeSpan.FromMilliseconds(100));
        Assert.All((await lane.StatesAsync(ids)).Values, s => Assert.Equal(1, s.Completions));

        var reads = monitor.LinesAfter(skip).Count(line => line.Contains("\"XREADGROUP\"", StringComparison.OrdinalIgnoreCase));
        output.WriteLine($"{reads} reads (XREADGROUP) for {events} events through a buffer of 8");
        // At least 4 entries a read, plus the reads that found the stream empty (one BLOCK timeout per second).
        Assert.True(reads <= events / 3, $"{reads} XREADGROUPs for {events} events: the backlog was read a freed slot at a time");
    }
}
