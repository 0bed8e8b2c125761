using System.Globalization;
using System.Net.Http.Json;
using System.Text;
using EventPipeline.Bench.Cli;
using EventPipeline.Bench.Target;
using StackExchange.Redis;

namespace EventPipeline.Bench.Chaos;

/// <summary>
/// <c>bench chaos</c>: starts the real system through the AppHost (test events on), warms it up, then for
/// <c>--duration</c> seconds runs the client mix, the dead-letter operator and the nemesis together; heals everything
/// (resumes, starts what is down), waits for quiet and lets <see cref="TotalQueueChecker"/> account for every event.
/// Ends with the one summary line; exit 0 only when no guarantee was broken (docs/reliability.md).
/// </summary>
public static class ChaosRunner
{
    private static readonly TimeSpan HealTimeout = TimeSpan.FromSeconds(180);

    /// <summary>After the heal, how long a guarded request still unanswered may keep retrying.</summary>
    private static readonly TimeSpan ClientGrace = TimeSpan.FromSeconds(90);

    /// <returns>0: every event accounted for; 1: a guarantee was broken (the line says which); 3: the system could not be healed.</returns>
    public static async Task<int> RunAsync(BenchOptions options, TextWriter output, TextWriter log, CancellationToken cancellationToken)
    {
        var seed = options.Seed;
        var duration = TimeSpan.FromSeconds(options.DurationSeconds);
        log.WriteLine($"[chaos] seed {seed}, {duration.TotalSeconds:F0} s of faults, {options.Clients} clients, topology {options.Topology}{(options.MajorityFaults ? " with majority faults" : "")}");
        await using var target = await AppHostLauncher.StartAsync(options, log, cancellationToken);
        await using var processes = new ResourceProcesses(target.App!);
        var targets = Nemesis.TargetsFor(options.Topology);
        var history = new ChaosHistory();
        using var http = new HttpClient(new SocketsHttpHandler
        {
            ConnectTimeout = TimeSpan.FromSeconds(5),
            PooledConnectionLifetime = TimeSpan.FromSeconds(30),
            MaxConnectionsPerServer = 64,
            UseProxy = false,
        })
        { Timeout = Timeout.InfiniteTimeSpan };
        // Aspire's proxy address of the API stays the same when the nemesis restarts the API (its own port may not).
        Func<Uri> api = () => target.Api;
        await using var redis = await ConnectionMultiplexer.ConnectAsync(
            target.Redis + ",abortConnect=false,connectTimeout=2000,syncTimeout=3000,asyncTimeout=3000");
        var poller = new StatePoller(redis, history);
        var clients = new ChaosClients(http, api, target.ApiKey, history, log);
        var deadLetters = new DeadLetterOperator(http, api, target.AdminKey!, history);
        var nemesis = new Nemesis(processes, history, log, targets, options.MajorityFaults);
        var runTag = string.Create(CultureInfo.InvariantCulture, $"s{seed}");

        await WarmUpAsync(processes, http, api, target.ApiKey, history, log, cancellationToken);

        history.Mark($"faults start ({duration.TotalSeconds:F0} s)");
        using var faultsEnd = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        using var giveUp = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        using var pollStop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var polling = poller.RunAsync(pollStop.Token);
        var clientsDone = clients.RunAsync(options.Clients, seed, runTag, faultsEnd.Token, giveUp.Token);
        var operatorDone = deadLetters.RunAsync(seed, faultsEnd.Token);
        var nemesisDone = nemesis.RunAsync(seed, faultsEnd.Token, cancellationToken);
        var start = history.Now;
        while (history.Now - start < duration)
        {
            await Task.Delay(TimeSpan.FromSeconds(Math.Min(10, Math.Max(0.1, (duration - (history.Now - start)).TotalSeconds))), cancellationToken);
            log.WriteLine($"[chaos] {history.Now.TotalSeconds:F0}s ops={clients.Operations} tracked={history.Events.Count} " +
                          $"final={history.Events.Count(e => e.IsFinal)} faults={string.Join(',', history.FaultCounts.Select(f => $"{f.Key}:{f.Value}"))}");
        }

        await faultsEnd.CancelAsync();
        history.Mark("faults end: no new client operations, no operator actions");
        await Task.WhenAll(nemesisDone, operatorDone);

        var healed = await HealAsync(processes, targets, history, log, cancellationToken);
        giveUp.CancelAfter(ClientGrace);
        await clientsDone;
        history.Mark($"clients done ({clients.Operations} operations, {clients.Unanswered} guarded tries unanswered)");

        var quiet = await WaitForQuietAsync(poller, history, TimeSpan.FromSeconds(options.QuietSeconds), log, cancellationToken);
        await pollStop.CancelAsync();
        await polling;
        await poller.PollOnceAsync(cancellationToken);
        try
        {
            await CountDeliveriesAsync(http, target.Downstream, history, cancellationToken);
        }
        catch (Exception ex) when (ex is HttpRequestException or System.Text.Json.JsonException)
        {
            history.Mark($"receiver counts not read ({ex.Message}): duplicate deliveries unknown");
        }

        var unexpected = await UntrackedEventsAsync(redis, history);

        var verdict = TotalQueueChecker.Check(seed, history.Events, history.Keys, history.FaultCounts);
        output.WriteLine($"answers: {string.Join(", ", history.AnswerCounts.Select(a => $"{a.Key}×{a.Value}"))}");
        output.WriteLine($"operations: {clients.Operations}; guarded tries still unanswered at the end: {clients.Unanswered}; " +
                         $"status reads that failed (Redis down or paused): {poller.FailedRounds}; quiet reached: {quiet}; healed: {healed}");
        output.WriteLine($"untracked events in the status store (an unguarded request whose answer was lost, or a re-minted id): {unexpected}");
        output.WriteLine("timeline:");
        foreach (var line in history.Timeline)
        {
            output.WriteLine($"  {line}");
        }

        output.Write(verdict.Details());
        output.WriteLine(verdict.SummaryLine);
        return !healed ? 3 : verdict.Passed ? 0 : 1;
    }

    /// <summary>
    /// Traffic on both lanes, then one clean restart of RabbitMQ before any fault: RabbitMQ 3.10 does not bring back a
    /// quorum queue whose node was SIGKILLed moments after declaring it (README, "Known broker edge"). That edge is the
    /// broker's; a queue that has been through one clean restart recovers from SIGKILL, as a broker in service does.
    /// In Cluster mode there is no single <c>rabbitmq</c> process (it is the connection string): the queue has a
    /// member on each node, and one node's SIGKILL leaves two that hold it, so no restart is made.
    /// </summary>
    private static async Task WarmUpAsync(ResourceProcesses processes, HttpClient http, Func<Uri> api, string submitKey, ChaosHistory history, TextWriter log, CancellationToken cancellationToken)
    {
        history.Mark("warm-up: traffic, then a clean restart of rabbitmq");
        for (var i = 0; i < 10; i++)
        {
            await SubmitWarmUpAsync(http, api, submitKey, i % 2 == 0 ? "noop.cpu" : "noop.io", history, cancellationToken);
        }

        if (processes.MainPid("rabbitmq") is { } beam)
        {
            log.WriteLine($"[chaos] warm-up: clean restart of rabbitmq (SIGTERM {beam})");
            ResourceProcesses.Signal([beam], ResourceProcesses.SIGTERM);
            await processes.WaitStoppedAsync("rabbitmq", TimeSpan.FromSeconds(60), cancellationToken);
            await processes.StartAsync("rabbitmq", HealTimeout, cancellationToken);
        }

        var deadline = DateTimeOffset.UtcNow + TimeSpan.FromSeconds(120);
        while (!await SubmitWarmUpAsync(http, api, submitKey, "noop.io", history, cancellationToken))
        {
            if (DateTimeOffset.UtcNow > deadline)
            {
                throw new TimeoutException("the I/O lane did not accept events within 120 s of RabbitMQ's clean restart");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(500), cancellationToken);
        }

        history.Mark("warm-up done");
    }

    private static async Task<bool> SubmitWarmUpAsync(HttpClient http, Func<Uri> api, string submitKey, string type, ChaosHistory history, CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(api(), "/events"))
        {
            Content = new StringContent($$$"""{"type":"{{{type}}}","payload":{}}""", Encoding.UTF8, "application/json"),
        };
        request.Headers.Add("X-Api-Key", submitKey);
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(TimeSpan.FromSeconds(15));
            using var response = await http.SendAsync(request, timeout.Token);
            if ((int)response.StatusCode != 202)
            {
                return false;
            }

            var answer = await response.Content.ReadFromJsonAsync<System.Text.Json.JsonElement>(timeout.Token);
            history.Track(answer.GetProperty("id").GetString()!, type, "warm-up", "202 to warm-up");
            return true;
        }
        catch (Exception ex) when (ex is HttpRequestException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            return false;
        }
    }

    /// <summary>Resumes every process of every target (a stray SIGSTOP cannot outlive the run) and starts what is down.</summary>
    private static async Task<bool> HealAsync(ResourceProcesses processes, IReadOnlyList<string> targets, ChaosHistory history, TextWriter log, CancellationToken cancellationToken)
    {
        history.Mark("heal: SIGCONT everything, start what is down");
        var healed = true;
        var instances = targets.SelectMany(processes.Instances).ToList();
        foreach (var resource in instances)
        {
            ResourceProcesses.Signal(processes.Processes(resource), ResourceProcesses.SIGCONT);
        }

        foreach (var resource in instances)
        {
            try
            {
                if (processes.IsStopped(resource))
                {
                    log.WriteLine($"[chaos] heal: starting {resource} (state {processes.State(resource)})");
                    await processes.StartAsync(resource, HealTimeout, cancellationToken);
                }
                else
                {
                    await processes.WaitHealthyAsync(resource, HealTimeout, cancellationToken);
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or InvalidOperationException && !cancellationToken.IsCancellationRequested)
            {
                healed = false;
                history.Mark($"heal: {resource} is not healthy (state {processes.State(resource)}): {ex.Message}");
                log.WriteLine($"[chaos] heal: {resource} did not come back healthy (state {processes.State(resource)})");
            }
        }

        history.Mark($"heal done ({(healed ? "all healthy" : "NOT all healthy")})");
        return healed;
    }

    private static async Task<bool> WaitForQuietAsync(StatePoller poller, ChaosHistory history, TimeSpan timeout, TextWriter log, CancellationToken cancellationToken)
    {
        var deadline = history.Now + timeout;
        var lastLog = history.Now;
        while (history.Now < deadline)
        {
            // Two rounds in a row with everything final: the second also covers next stages the first one added.
            if (await poller.PollOnceAsync(cancellationToken) && history.Events.All(e => e.IsFinal)
                && await poller.PollOnceAsync(cancellationToken) && history.Events.All(e => e.IsFinal))
            {
                history.Mark($"quiet: all {history.Events.Count} tracked events succeeded or dead");
                return true;
            }

            if (history.Now - lastLog > TimeSpan.FromSeconds(10))
            {
                lastLog = history.Now;
                var open = history.Events.Where(e => !e.IsFinal).ToList();
                log.WriteLine($"[chaos] waiting for quiet: {open.Count} of {history.Events.Count} not final ({string.Join(", ", open.GroupBy(e => e.LastState ?? "no status").Select(g => $"{g.Key} {g.Count()}"))})");
            }

            await Task.Delay(TimeSpan.FromSeconds(1), cancellationToken);
        }

        history.Mark($"quiet NOT reached within {timeout.TotalSeconds:F0} s");
        return false;
    }

    /// <summary>The receiver's count of 2xx deliveries per Idempotency-Key (the event id), for every webhook.</summary>
    private static async Task CountDeliveriesAsync(HttpClient http, Uri? downstream, ChaosHistory history, CancellationToken cancellationToken)
    {
        if (downstream is null)
        {
            return;
        }

        var webhooks = history.Events.Where(e => e.DeliversDownstream).ToList();
        foreach (var chunk in webhooks.Chunk(500))
        {
            using var response = await http.PostAsJsonAsync(new Uri(downstream, "/received/lookup"), new { keys = chunk.Select(e => e.Id).ToArray() }, cancellationToken);
            response.EnsureSuccessStatusCode();
            var counts = (await response.Content.ReadFromJsonAsync<System.Text.Json.JsonElement>(cancellationToken)).GetProperty("counts");
            foreach (var e in chunk)
            {
                e.ReceiverCount = counts.TryGetProperty(e.Id, out var c) ? c.GetProperty("count").GetInt32() : 0;
            }
        }
    }

    /// <summary>Status hashes no answer named: the ids of unguarded requests whose answer the client never got.</summary>
    private static async Task<int> UntrackedEventsAsync(ConnectionMultiplexer redis, ChaosHistory history)
    {
        var count = 0;
        // The primary only: behind Sentinel the multiplexer also knows the replicas, which hold the same keys.
        foreach (var server in redis.GetServers().Where(s => s.IsConnected && !s.IsReplica))
        {
            await foreach (var key in server.KeysAsync(pattern: "event:*", pageSize: 1000))
            {
                if (history.Find(key.ToString()["event:".Length..]) is null)
                {
                    count++;
                }
            }
        }

        return count;
    }
}
