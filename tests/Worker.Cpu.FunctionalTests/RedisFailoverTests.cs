using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;
using StackExchange.Redis;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

/// <summary>
/// The CPU lane across a Redis failover (one primary, two replicas, three Sentinels; real processes): the API and the
/// workers follow Sentinel to the promoted replica without a restart, the consumer group and the scripts work there,
/// and with <c>Ingest:RedisReplicaAcks</c> 1 no event that got a 202 is lost with the primary. Results go to
/// docs/ha.md.
/// </summary>
[Collection(CpuLaneCollection.Name)]
public sealed class RedisFailoverTests(SharedRabbitMq rabbit, ITestOutputHelper output)
{
    private const int BurstSize = 10_000;
    private const int BatchSize = 100;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Sentinel_promotes_a_replica_that_holds_the_primarys_consumer_group_and_the_old_primary_rejoins_as_a_replica()
    {
        await using var set = await RedisSentinelSet.StartAsync();
        await using var client = await set.ConnectAsync();
        var db = client.GetDatabase();
        await db.StreamCreateConsumerGroupAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group, StreamPosition.Beginning, createStream: true);
        await db.ExecuteAsync("WAIT", 2, 5000);

        var watch = Stopwatch.StartNew();
        var old = await set.KillPrimaryAsync();
        var promoted = await set.WaitForNewPrimaryAsync(old, Patience);
        output.WriteLine($"primary {old} killed; {promoted} promoted after {watch.Elapsed.TotalSeconds:F1} s");

        // The client follows the switch: it writes to the promoted node, where the group is (replicated, not re-created).
        await Eventually.TrueAsync(async () => !(await db.StreamAddAsync(CpuLaneStreams.Stream, "id", "after-failover")).IsNull,
            Patience, "the Sentinel client to write to the promoted primary");
        await using (var direct = await set.ConnectNodeAsync(promoted))
        {
            var groups = await direct.GetDatabase().StreamGroupInfoAsync(CpuLaneStreams.Stream);
            Assert.Contains(groups, g => g.Name == CpuLaneStreams.Group);
            Assert.Equal(1, await direct.GetDatabase().StreamLengthAsync(CpuLaneStreams.Stream));
        }

        await set.RestartAsReplicaAsync(old, Patience);
        Assert.Equal(promoted, await set.PrimaryPortAsync());
    }

    [Fact]
    public async Task A_write_fewer_replicas_acknowledge_than_RedisReplicaAcks_is_answered_503_with_its_ids_uncertain_never_202()
    {
        await using var lane = await SentinelLaneHarness.StartAsync(await rabbit.GetAsync(), replicaAcks: 1, workers: 0);
        var before = Guid.NewGuid().ToString("N");
        using (var fine = await lane.SubmitBatchAsync([NoopCpu(before)]))
        {
            Assert.Equal(HttpStatusCode.Accepted, fine.StatusCode);
        }

        // The submission above wrote the replica-ack probe. An event named like the probe is an event like any other:
        // when the probe's key was in the reservations' namespace (ingest:<id>), it was answered "duplicate" and never
        // written.
        using (var named = await lane.SubmitBatchAsync([NoopCpu("replica-ack-probe")]))
        {
            Assert.True(named.StatusCode == HttpStatusCode.Accepted,
                $"an event with the probe's name was answered {(int)named.StatusCode}: {await named.Content.ReadAsStringAsync()}");
        }

        var primary = await lane.Redis.PrimaryPortAsync();
        foreach (var replica in lane.Redis.NodePorts.Where(p => p != primary))
        {
            await lane.Redis.KillNodeAsync(replica);
        }

        var id = Guid.NewGuid().ToString("N");
        using var refused = await lane.SubmitBatchAsync([NoopCpu(id)]);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        Assert.True(refused.Headers.RetryAfter is not null, "a 503 without Retry-After");
        var problem = await refused.Content.ReadFromJsonAsync<JsonElement>();
        output.WriteLine(problem.ToString());
        Assert.Equal([id], problem.GetProperty("uncertainIds").EnumerateArray().Select(e => e.GetString()));
    }

    [Fact]
    public async Task A_retry_after_a_replica_ack_503_is_not_answered_as_held_until_a_replica_holds_the_event()
    {
        await using var lane = await SentinelLaneHarness.StartAsync(await rabbit.GetAsync(), replicaAcks: 1, workers: 0);
        var primary = await lane.Redis.PrimaryPortAsync();
        foreach (var replica in lane.Redis.NodePorts.Where(p => p != primary))
        {
            await lane.Redis.KillNodeAsync(replica);
        }

        // The first try lands on the primary and is answered 503 (uncertain); the retry finds it there as a repeat.
        var id = Guid.NewGuid().ToString("N");
        using (var first = await lane.SubmitBatchAsync([NoopCpu(id)]))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, first.StatusCode);
        }

        using var retry = await lane.SubmitBatchAsync([NoopCpu(id)]);
        var body = await retry.Content.ReadAsStringAsync();
        output.WriteLine(body);
        Assert.True(retry.StatusCode == HttpStatusCode.ServiceUnavailable,
            $"a repeat of an event no replica holds was answered {(int)retry.StatusCode} (as held): {body}");
        Assert.Contains(id, JsonDocument.Parse(body).RootElement.GetProperty("uncertainIds").EnumerateArray().Select(e => e.GetString()));
    }

    [Fact]
    public async Task Waiting_for_replica_acks_does_not_hold_up_the_apis_other_redis_commands()
    {
        await using var lane = await SentinelLaneHarness.StartAsync(await rabbit.GetAsync(), replicaAcks: 1, workers: 0);
        // Written by the test, not submitted: the API's first round of replica waits is the first submission below, which
        // opens the wait connection inside that round (a fresh API). In session 9 that first submission was answered 503
        // (BrokerTimeout, 5 s) before its WAIT was seen in its first second, so it is skipped as a try and the tries go on
        // until three reads were sent inside a WAIT.
        var known = Guid.NewGuid().ToString("N");
        await lane.Statuses.MarkAcceptedAsync(known, "noop.cpu", EventPipeline.Contracts.Lanes.Cpu, DateTimeOffset.UtcNow);
        var primary = await lane.Redis.PrimaryPortAsync() ?? throw new InvalidOperationException("the Sentinels do not agree on a primary");
        foreach (var replica in lane.Redis.NodePorts.Where(p => p != primary))
        {
            await lane.Redis.KillNodeAsync(replica);
        }

        // The whole API (GET /health/live too) pauses for up to a few seconds once the replicas die, its thread pool
        // growing meanwhile (docs/operations.md, "A Redis replica dies"): the tries start once a status read answers at
        // once again, so that pause is not taken for a read held behind a WAIT.
        await Eventually.ReturnsAsync(async () =>
        {
            var watch = Stopwatch.StartNew();
            using var status = await lane.Api.GetAsync($"/events/{known}");
            return status.StatusCode == HttpStatusCode.OK && watch.Elapsed < TimeSpan.FromMilliseconds(200);
        }, settled => settled, TimeSpan.FromSeconds(60), "a status read answering within 200 ms after the replicas died");

        // Each try: one submission, so one round and one WAIT, which blocks on the primary for RedisReplicaAckTimeout (2 s)
        // as no replica answers. A status read sent while that WAIT is blocked must answer while it still is: on the
        // connection the WAIT blocks, the read would be answered only after it (Redis answers a connection in order).
        await using var node = await lane.Redis.ConnectNodeAsync(primary);
        var server = node.GetServer(IPAddress.Loopback, primary);
        // Any client's: the API's is the only one sending WAIT here, whichever of its connections it uses. Only a WAIT
        // blocked for under a second counts (idle 0), so the read has at least a second left to answer inside it even
        // when this busy machine stalls the test between two polls.
        async Task<ClientInfo?> BlockedWaitAsync() => (await server.ClientListAsync()).FirstOrDefault(c =>
            c.LastCommand == "wait" && c.Flags.HasFlag(ClientFlags.Blocked));

        var tries = new List<string>();
        for (var attempt = 0; attempt < 5 && tries.Count(t => t.StartsWith("read", StringComparison.Ordinal)) < 3; attempt++)
        {
            // A round can outlive its submission (answered 503 at BrokerTimeout): a read sent during that leftover WAIT
            // would queue behind it and then see this try's own WAIT on the same connection, counted as a pass. So each
            // try starts with no WAIT blocked; the one seen next is this submission's.
            await Eventually.TrueAsync(async () => await BlockedWaitAsync() is null, TimeSpan.FromSeconds(60),
                "no WAIT of an earlier round to be blocked on the primary", TimeSpan.FromMilliseconds(20));
            var submission = lane.SubmitBatchAsync([NoopCpu(Guid.NewGuid().ToString("N"))]);
            var blocked = await Eventually.ReturnsAsync(BlockedWaitAsync, c => c is { IdleSeconds: 0 } || submission.IsCompleted,
                TimeSpan.FromSeconds(60), "the API's WAIT to block on the primary", TimeSpan.FromMilliseconds(10));
            if (blocked is not { IdleSeconds: 0 } || submission.IsCompleted)
            {
                tries.Add("no WAIT seen blocked in its first second before the submission ended");
                (await submission).Dispose();
                continue;
            }

            var watch = Stopwatch.StartNew();
            using (var status = await lane.Api.GetAsync($"/events/{known}"))
            {
                Assert.Equal(HttpStatusCode.OK, status.StatusCode);
            }

            watch.Stop();
            var stillBlocked = await BlockedWaitAsync();
            var answeredDuringWait = stillBlocked?.Id == blocked.Id && !submission.IsCompleted;
            tries.Add($"read answered in {watch.Elapsed.TotalMilliseconds:F0} ms, {(answeredDuringWait ? "while the WAIT was still blocked" : "after the WAIT ended")}");
            using var refused = await submission;
            Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        }

        output.WriteLine(string.Join("\n", tries));
        Assert.True(tries.Count(t => t.EndsWith("while the WAIT was still blocked", StringComparison.Ordinal)) >= 2,
            $"status reads sent while the API's replica WAIT blocked were answered only after it:\n{string.Join("\n", tries)}");
    }

    [Fact]
    public async Task Primary_killed_mid_burst_with_RedisReplicaAcks_1_and_a_worker_killed_in_the_failover_every_202_event_succeeds()
    {
        await using var lane = await SentinelLaneHarness.StartAsync(await rabbit.GetAsync(), replicaAcks: 1, workers: 3);
        var run = await RunBurstThroughFailoverAsync(lane, killWorker: true);

        // The guarantee: every 202 was on a replica too, and Sentinel promotes the most up-to-date replica.
        var states = await Eventually.ReturnsAsync(() => lane.StatesAsync(run.Accepted), s => s.Values.All(v => v.State == "succeeded"),
            Patience, "every event that got a 202 to succeed on the new primary", TimeSpan.FromMilliseconds(500));
        Report(run, states);
        Assert.Equal(BurstSize, run.Accepted.Count);
        Assert.True(run.Refused > 0, "no client ever saw the failover: the test did not test anything");
        await lane.Redis.RestartAsReplicaAsync(run.OldPrimary, Patience);
    }

    [Fact]
    public async Task Primary_killed_mid_burst_without_replica_acks_every_202_event_either_succeeds_or_is_lost_whole_and_the_loss_is_counted()
    {
        await using var lane = await SentinelLaneHarness.StartAsync(await rabbit.GetAsync(), replicaAcks: 0, workers: 2);
        var run = await RunBurstThroughFailoverAsync(lane, killWorker: false);

        // What is guaranteed with 0: an event's status and its stream entry are one MULTI/EXEC, replicated whole, so an
        // event the failover lost is gone entirely (no status, nothing to run) and every other one succeeds. The number
        // lost is what asynchronous replication let slip: reported, not asserted.
        await Eventually.ReturnsAsync(async () =>
            {
                var length = await lane.Db.StreamLengthAsync(CpuLaneStreams.Stream);
                var counts = (await lane.StatesAsync(run.Accepted)).Values.GroupBy(v => v.State ?? "(none)").ToDictionary(g => g.Key, g => g.Count());
                var pending = await lane.Db.StreamPendingAsync(CpuLaneStreams.Stream, CpuLaneStreams.Group);
                return (Drained: length == 0 && counts.Keys.All(k => k is "succeeded" or "(none)"),
                    Detail: $"stream {length}, pending {pending.PendingMessageCount} ({string.Join(", ", pending.Consumers.Select(c => $"{c.Name}: {c.PendingMessageCount}"))}), states {string.Join(", ", counts.Select(c => $"{c.Key} {c.Value}"))}");
            }, r => r.Drained, Patience, "the lane to drain on the new primary", TimeSpan.FromMilliseconds(500));
        var states = await lane.StatesAsync(run.Accepted);
        Report(run, states);
        Assert.All(states, s => Assert.True(s.Value.State is "succeeded" or null, $"{s.Key} is {s.Value.State}"));
        Assert.True(run.Refused > 0, "no client ever saw the failover: the test did not test anything");
    }

    private static object NoopCpu(string id) => new { id, type = "noop.cpu", payload = new { } };

    private sealed record BurstRun(IReadOnlyCollection<string> Accepted, int Refused, int OldPrimary, int NewPrimary, TimeSpan Promotion, TimeSpan WithoutService, TimeSpan Duration);

    /// <summary>
    /// Four clients submit <see cref="BurstSize"/> noop.cpu events in batches, each batch resubmitted with the same ids
    /// after a 503 (safe: the ids are the idempotency). When a third is accepted, the primary is SIGKILLed (and, if
    /// asked, a worker right after it); the burst goes on through the failover.
    /// </summary>
    private async Task<BurstRun> RunBurstThroughFailoverAsync(SentinelLaneHarness lane, bool killWorker)
    {
        var tag = Guid.NewGuid().ToString("N")[..8];
        var batches = new ConcurrentQueue<object[]>(Enumerable.Range(0, BurstSize / BatchSize)
            .Select(b => Enumerable.Range(b * BatchSize, BatchSize).Select(i => NoopCpu($"fo-{i}-{tag}")).ToArray()));
        var accepted = new ConcurrentDictionary<string, byte>();
        var acceptedAt = new ConcurrentBag<TimeSpan>();
        var refused = 0;
        var watch = Stopwatch.StartNew();
        using var giveUp = new CancellationTokenSource(TimeSpan.FromMinutes(2));

        var clients = Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
        {
            while (batches.TryDequeue(out var batch))
            {
                while (true)
                {
                    giveUp.Token.ThrowIfCancellationRequested();
                    try
                    {
                        using var response = await lane.SubmitBatchAsync(batch, giveUp.Token);
                        // 200: every id was already held (an earlier, uncertain try of this batch had landed).
                        if (response.StatusCode is HttpStatusCode.Accepted or HttpStatusCode.OK)
                        {
                            var body = await response.Content.ReadFromJsonAsync<JsonElement>();
                            foreach (var e in body.GetProperty("events").EnumerateArray())
                            {
                                accepted.TryAdd(e.GetProperty("id").GetString()!, 0);
                            }

                            acceptedAt.Add(watch.Elapsed);
                            break;
                        }

                        // 503: the broker did not confirm; 409: the same ids' earlier attempt is still in doubt; both say retry.
                        Assert.True(response.StatusCode is HttpStatusCode.ServiceUnavailable or HttpStatusCode.TooManyRequests or HttpStatusCode.Conflict,
                            $"unexpected {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}\nAPI log:\n{string.Join('\n', lane.ApiProcess.Output.TakeLast(80))}");
                    }
                    catch (HttpRequestException)
                    {
                    }

                    Interlocked.Add(ref refused, batch.Length);
                    await Task.Delay(50, giveUp.Token);
                }
            }
        })).ToArray();

        await Eventually.TrueAsync(() => Task.FromResult(accepted.Count >= BurstSize / 3), Patience, "a third of the burst accepted");
        var killedAt = watch.Elapsed;
        var oldPrimary = await lane.Redis.KillPrimaryAsync();
        if (killWorker)
        {
            await lane.Workers[0].KillAsync();
        }

        var newPrimary = await lane.Redis.WaitForNewPrimaryAsync(oldPrimary, Patience);
        var promotion = watch.Elapsed - killedAt;
        output.WriteLine($"primary {oldPrimary} killed at {killedAt.TotalSeconds:F1} s with {accepted.Count} accepted; {newPrimary} promoted after {promotion.TotalSeconds:F1} s");
        await Task.WhenAll(clients);

        var times = acceptedAt.Order().ToList();
        var gap = times.Zip(times.Skip(1), (a, b) => (Start: a, Length: b - a)).Where(g => g.Start + g.Length > killedAt).Max(g => g.Length);
        return new BurstRun([.. accepted.Keys], refused, oldPrimary, newPrimary, promotion, gap, watch.Elapsed);
    }

    private void Report(BurstRun run, Dictionary<string, (string? State, long Completions)> states)
    {
        var succeeded = states.Values.Count(s => s.State == "succeeded");
        var lost = states.Values.Count(s => s.State is null);
        var duplicated = states.Values.Count(s => s.Completions > 1);
        output.WriteLine($"accepted (202) {run.Accepted.Count}, refused (503/409, resubmitted) {run.Refused}, succeeded {succeeded}, lost {lost}, " +
            $"recorded twice {duplicated}; promotion {run.Promotion.TotalSeconds:F1} s, longest time without a 202 {run.WithoutService.TotalSeconds:F1} s, " +
            $"burst {run.Duration.TotalSeconds:F1} s");
    }
}
