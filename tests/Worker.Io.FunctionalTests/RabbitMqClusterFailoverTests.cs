using System.Text.Json.Nodes;
using EventPipeline.Testing;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// The I/O lane's promise on a three-node RabbitMQ cluster: an event that got a 202 is delivered while a majority of
/// the nodes of its quorum queue lives, whichever node dies; with no majority the API answers 503, never 202.
/// Nodes and workers die by SIGKILL in the middle of a burst.
/// </summary>
public sealed class RabbitMqClusterFailoverTests(RabbitMqClusterLane lane, ITestOutputHelper output) : IClassFixture<RabbitMqClusterLane>
{
    private const string Queue = IoLaneHost.QueueName;
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(180);

    private static JsonObject[][] Burst(string prefix, int events, int batchSize = 100) =>
        [.. Enumerable.Range(0, events).Select(i => IoLaneHost.Webhook(IoLaneHost.NewId($"{prefix}-{i}"))).Chunk(batchSize)];

    private static IEnumerable<string> Ids(IEnumerable<JsonObject[]> batches) => batches.SelectMany(b => b).Select(e => e["id"]!.GetValue<string>());

    [Fact]
    public async Task Events_io_quorum_queue_has_a_member_on_every_node()
    {
        await lane.EnsureAllNodesRunAsync();
        var members = await lane.Cluster.QuorumMembersAsync(Queue);
        output.WriteLine($"{Queue} members: {string.Join(", ", members)}");
        Assert.Equal(lane.Cluster.Nodes.Select(n => n.NodeName).Order(), members.Order());
    }

    [Fact]
    public async Task Every_accepted_event_is_delivered_when_the_queue_leader_and_later_a_second_node_are_killed_mid_burst()
    {
        await lane.EnsureAllNodesRunAsync();
        var log = new SubmissionLog();
        var first = Burst("leader-kill-a", 2000);
        var second = Burst("leader-kill-b", 1000);
        var third = Burst("leader-kill-c", 2000);
        var all = Ids(first.Concat(second).Concat(third)).ToList();

        // 1. The leader of events-io dies while the first 2,000 are being submitted.
        var sending = log.SendAllAsync(lane.ApiClient, first, parallelism: 4, Deadline);
        await Eventually.TrueAsync(() => Task.FromResult(log.Held.Count >= 600 || sending.IsCompleted), Deadline, "600 events to be accepted");
        var leader = await lane.Cluster.QuorumLeaderAsync(Queue) ?? throw new InvalidOperationException($"{Queue} has no leader");
        var firstKillAt = log.Now;
        var heldAtFirstKill = log.Held.Count;
        await lane.Cluster.KillAsync(leader.Index);
        output.WriteLine($"{firstKillAt.TotalSeconds:F1} s: SIGKILL {leader} (leader of {Queue}) with {heldAtFirstKill} accepted");
        try
        {
            await sending;
        }
        catch (TimeoutException)
        {
            // Runs used to never get a 202 again after the leader's SIGKILL (a publishing channel the queue had refused was
            // kept; issue 15, fixed by IoEventPublisher replacing it): should it ever happen again, keep what the API said.
            output.WriteLine("API log:\n" + string.Join('\n', lane.Api.Output.TakeLast(120)));
            throw;
        }
        var newLeader = await Eventually.ReturnsAsync(() => lane.Cluster.QuorumLeaderAsync(Queue), l => l is not null && l != leader,
            Deadline, $"{Queue} to elect a new leader");
        output.WriteLine($"{log.Now.TotalSeconds:F1} s: first 2,000 held; new leader {newLeader}");

        // 2. 1,000 more while the killed node restarts.
        var restart = lane.Cluster.RestartAsync(leader.Index);
        await log.SendAllAsync(lane.ApiClient, second, parallelism: 4, Deadline);
        await restart;
        await lane.Cluster.WaitUntilAllRunningAsync();
        output.WriteLine($"{log.Now.TotalSeconds:F1} s: {leader.NodeName} back; 3,000 held");

        // 3. A second node (the queue's leader now) dies in the middle of the last 2,000.
        sending = log.SendAllAsync(lane.ApiClient, third, parallelism: 4, Deadline);
        var target = log.Held.Count + 600;
        await Eventually.TrueAsync(() => Task.FromResult(log.Held.Count >= target || sending.IsCompleted), Deadline, "600 more events to be accepted");
        var victim = await lane.Cluster.QuorumLeaderAsync(Queue) is { } l2 && l2 != leader ? l2 : lane.Cluster.Nodes.First(n => n != leader);
        var secondKillAt = log.Now;
        var heldAtSecondKill = log.Held.Count;
        await lane.Cluster.KillAsync(victim.Index);
        output.WriteLine($"{secondKillAt.TotalSeconds:F1} s: SIGKILL {victim} with {heldAtSecondKill} accepted");
        await sending;
        await lane.Cluster.RestartAsync(victim.Index);
        await lane.Cluster.WaitUntilAllRunningAsync();
        output.WriteLine($"{log.Now.TotalSeconds:F1} s: all 5,000 held; {victim.NodeName} back");

        // Every event the API said it holds must succeed and reach the receiver.
        var held = log.Held.Keys.ToList();
        Assert.Equal(all.Count, held.Intersect(all).Count());
        await Eventually.TrueAsync(async () => (await lane.StatesAsync(held)).Values.All(s => s == "succeeded"),
            Deadline, "every accepted event to succeed", TimeSpan.FromMilliseconds(500));
        var deliveries = await lane.DeliveriesAsync(held);
        var lost = held.Where(id => deliveries.GetValueOrDefault(id) == 0).ToList();
        var duplicated = deliveries.Values.Count(c => c > 1);
        var unavailable = log.Answers.Count(a => a.Status is 503 or 0);
        output.WriteLine($"accepted {held.Count}, lost {lost.Count}, duplicated {duplicated} (extra deliveries {deliveries.Values.Sum(c => Math.Max(0, c - 1))}), " +
                         $"503/timeouts {unavailable}, 409s {log.Answers.Count(a => a.Status == 409)}, 200s (all already held) {log.Answers.Count(a => a.Status == 200)}, " +
                         $"time without a 202: {log.LongestGapBetweenAccepts(firstKillAt, firstKillAt + TimeSpan.FromSeconds(60)).TotalSeconds:F2} s after the first kill, " +
                         $"{log.LongestGapBetweenAccepts(secondKillAt, secondKillAt + TimeSpan.FromSeconds(60)).TotalSeconds:F2} s after the second");
        Assert.True(heldAtFirstKill < first.Length * 100 && heldAtSecondKill < all.Count, "a kill came after its burst was all accepted");
        Assert.Empty(lost);
        Assert.All(log.Answers.Where(a => a.Status == 503), a => Assert.NotNull(a.RetryAfter));
    }

    [Fact]
    public async Task Without_a_majority_of_nodes_the_api_answers_503_and_never_202()
    {
        await lane.EnsureAllNodesRunAsync();
        var log = new SubmissionLog();
        var leader = await lane.Cluster.QuorumLeaderAsync(Queue) ?? throw new InvalidOperationException($"{Queue} has no leader");
        var survivor = lane.Cluster.Nodes.First(n => n != leader);
        var killed = lane.Cluster.Nodes.Where(n => n != survivor).ToList();
        await Task.WhenAll(killed.Select(n => lane.Cluster.KillAsync(n.Index)));
        var killedAt = log.Now;
        output.WriteLine($"SIGKILL {string.Join(" and ", killed)}; only {survivor} runs");

        // Two rounds of single-event submissions while only one node of three runs: each must be refused.
        var refusedIds = new List<string>();
        for (var round = 0; round < 2; round++)
        {
            var answers = await Task.WhenAll(Enumerable.Range(0, 4).Select(async i =>
            {
                var evt = IoLaneHost.Webhook(IoLaneHost.NewId($"minority-{round}-{i}"));
                using var response = await lane.ApiClient.PostAsync("/events",
                    new StringContent(evt.ToJsonString(), System.Text.Encoding.UTF8, "application/json"));
                return (Id: evt["id"]!.GetValue<string>(), Status: (int)response.StatusCode, RetryAfter: response.Headers.RetryAfter?.ToString(),
                    Body: await response.Content.ReadAsStringAsync());
            }));
            foreach (var answer in answers)
            {
                output.WriteLine($"{log.Now.TotalSeconds:F1} s: {answer.Status} Retry-After {answer.RetryAfter}");
                Assert.True(answer.Status == 503, $"with one node of three the API answered {answer.Status}: {answer.Body}");
                Assert.NotNull(answer.RetryAfter);
                refusedIds.Add(answer.Id);
            }
        }

        // Bring the majority back: the refused events, submitted again with the same ids, are accepted and delivered.
        await Task.WhenAll(killed.Select(n => lane.Cluster.RestartAsync(n.Index)));
        await lane.Cluster.WaitUntilAllRunningAsync();
        await lane.SubmitUntilHeldAsync([.. refusedIds.Select(id => IoLaneHost.Webhook(id))], log);
        var firstAccept = log.Accepted.Min(a => a.At);
        output.WriteLine($"no service for {(firstAccept - killedAt).TotalSeconds:F1} s (kill of two nodes until the first 202 after their restart)");
        await Eventually.TrueAsync(async () => (await lane.StatesAsync(refusedIds)).Values.All(s => s == "succeeded"),
            Deadline, "the refused events to succeed once resubmitted", TimeSpan.FromMilliseconds(500));
        var deliveries = await lane.DeliveriesAsync(refusedIds);
        output.WriteLine($"refused {refusedIds.Count}, delivered {deliveries.Values.Count(c => c > 0)}, " +
                         $"delivered more than once {deliveries.Values.Count(c => c > 1)}");
        Assert.All(refusedIds, id => Assert.True(deliveries[id] >= 1, $"{id} was never delivered"));
    }

    [Fact]
    public async Task Killed_worker_of_two_loses_no_event_of_a_burst()
    {
        await lane.EnsureAllNodesRunAsync();
        var second = lane.Workers.Count(w => !w.HasExited) >= 2 ? lane.Workers.Last(w => !w.HasExited) : await lane.StartWorkerAsync();
        var first = lane.Workers.First(w => !w.HasExited && w != second);
        var log = new SubmissionLog();
        // Each call takes 20 ms at the receiver, so many are in flight in both workers when one dies.
        var batches = Enumerable.Range(0, 2000)
            .Select(i => IoLaneHost.Webhook(IoLaneHost.NewId($"two-workers-{i}"), delayMs: 20)).Chunk(100).ToArray();
        var ids = Ids(batches).ToList();
        var sending = log.SendAllAsync(lane.ApiClient, batches, parallelism: 4, Deadline);

        await Eventually.TrueAsync(async () => (await lane.DeliveriesAsync(ids)).Values.Count(c => c > 0) >= 300,
            Deadline, "300 deliveries", TimeSpan.FromMilliseconds(200));
        await first.KillAsync();
        var atKill = (await lane.DeliveriesAsync(ids)).Values.Count(c => c > 0);
        output.WriteLine($"kill -9 Worker.Io pid {first.Pid} after {atKill} deliveries");
        await sending;

        await Eventually.TrueAsync(async () => (await lane.StatesAsync(ids)).Values.All(s => s == "succeeded"),
            Deadline, "every event to succeed on the surviving worker", TimeSpan.FromMilliseconds(500));
        var deliveries = await lane.DeliveriesAsync(ids);
        output.WriteLine($"{ids.Count} events: {deliveries.Values.Count(c => c == 0)} not delivered, {deliveries.Values.Count(c => c > 1)} delivered more than once");
        Assert.True(atKill < ids.Count, "the kill came after every event was delivered");
        Assert.All(ids, id => Assert.True(deliveries[id] >= 1, $"{id} was never delivered"));

        await lane.StartWorkerAsync(); // two workers again for whatever runs next
    }
}
