using System.Globalization;

namespace EventPipeline.Bench.Cli;

/// <summary>The command line, parsed. See <see cref="Usage"/> and docs/benchmarks.md.</summary>
public sealed class BenchOptions
{
    public const string Usage = """
        EventPipeline.Bench — load the pipeline and report throughput, latency, loss, duplicates, queue depth/lag, RSS and CPU.

        usage:
          bench burst  --workload <noop-cpu|noop-io|cpu|io> -n <N> [--batch <B>] [--connections <C>]
          bench steady --workload <...> --rate <R per s> --duration <T s> [--batch <B>] [--connections <C>]
          bench idle   [--duration <T s>] [--rate <R per s>]     pickup latency at a low rate (default 20/s), then idle CPU (default 15 s)
          bench suite  [--quick]                                 every target of issue 9 in one run (one AppHost start)
          bench report --from <run>.json                         judge the targets again and rewrite the run's markdown
          bench chaos  --duration <T s> --seed <n> [--clients <C>] [--quiet <s>] [--topology single|cluster] [--majority-faults]
                       random client mix under a seeded nemesis (SIGKILL, SIGSTOP, SIGTERM of the services and
                       brokers), then heal, wait for quiet and account for every event (docs/reliability.md);
                       exit 0 only when nothing was lost, no key got two ids and no event ended in a wrong state.
                       --topology cluster: the AppHost's Brokers:Topology=Cluster (three RabbitMQ nodes, Redis with two
                       replicas and three Sentinels, 3 Worker.Cpu and 2 Worker.Io replicas); the nemesis picks single
                       nodes and single replicas. --majority-faults (cluster only) also takes two nodes of one broker
                       down at once: then 503s are expected and a 202 must still never be wrong (docs/ha.md)

        workload:   --iterations <I> (cpu, default 10000; 0 = noop.cpu)  --delay-ms <D> (io, default 50)
        target:     starts the AppHost itself (brokers as local executables, data in a temp dir), unless
                    --url <producer-api URL> --api-key <submit key> [--redis <connection string>] [--downstream <URL>]
                    [--pid <name>=<pid> ...] points it at a running system.
        AppHost:    --set <resource>:<ENV>=<value>  extra environment for one service (for experiments, e.g.
                    --set worker-io:IoLane__ConcurrentMessageLimit=512); --via-proxy sends load through Aspire's proxy;
                    --verbose shows the services' and brokers' console output
        output:     --out <dir> (default bench/results)  --label <name> (default: command-workload-n)
                    --deadline <s> (default 600: accepted but not succeeded by then = lost)
                    --ceiling-events <M> (default 1000: PBKDF2 calls per timed round of the no-queue ceiling)
                    --warmup <N> (burst: N events of the same workload first, not reported: a warmed system)
                    --ceiling-rounds <R> (default 5: timed rounds before the system starts and again after it stops,
                    each time after 2 warm-up rounds; the best round counts, the slowest shows the spread)
        """;

    public string Command { get; set; } = "";

    /// <summary>chaos: the AppHost's <c>Brokers:Topology</c> (Single or Cluster).</summary>
    public string Topology { get; set; } = "Single";

    /// <summary>chaos, Cluster: some faults take a majority of one broker's nodes down at once.</summary>
    public bool MajorityFaults { get; set; }

    /// <summary>Extra AppHost configuration (<c>key=value</c>) for a run that starts the AppHost itself.</summary>
    public List<string> AppHostArguments { get; } = [];
    public string WorkloadName { get; set; } = "noop-cpu";
    public int Count { get; set; } = 1000;
    public int Batch { get; set; } = 1;
    public int Connections { get; set; } = 8;
    public double Rate { get; set; } = 100;
    public double DurationSeconds { get; set; } = 10;
    public int Iterations { get; set; } = 10_000;
    public int DelayMs { get; set; } = 50;
    public bool Quick { get; set; }
    public Uri? Url { get; set; }
    public string? ApiKey { get; set; }
    public string? Redis { get; set; }
    public Uri? Downstream { get; set; }
    public Dictionary<string, int> Pids { get; } = new(StringComparer.Ordinal);
    public List<(string Resource, string Name, string Value)> Settings { get; } = [];
    public bool ViaProxy { get; set; }
    public bool Verbose { get; set; }
    public string? From { get; set; }
    public string OutDirectory { get; set; } = Path.Combine("bench", "results");
    public string? Label { get; set; }
    public double DeadlineSeconds { get; set; } = 600;
    public int CeilingEvents { get; set; } = 1000;
    public bool CeilingEventsGiven { get; private set; }
    public int CeilingRounds { get; set; } = 5;

    /// <summary>burst: events of the same workload run (and not reported) before the measured burst.</summary>
    public int Warmup { get; set; }

    /// <summary>chaos: the seed of the client mix, the operator and the nemesis.</summary>
    public int Seed { get; set; } = 1;

    /// <summary>chaos: concurrent simulated clients.</summary>
    public int Clients { get; set; } = 4;

    /// <summary>chaos: after healing, how long to wait for every event to reach a final state.</summary>
    public double QuietSeconds { get; set; } = 240;

    /// <summary>Starts the AppHost with <c>TestEvents:Enabled=true</c> (test.fail), as the chaos mode needs.</summary>
    public bool TestEvents { get; set; }

    /// <summary>Set by <c>--rate</c>/<c>--duration</c> on <c>idle</c>, whose defaults differ.</summary>
    public bool RateGiven { get; private set; }
    public bool DurationGiven { get; private set; }

    public bool StartsAppHost => Url is null;

    public static BenchOptions Parse(IReadOnlyList<string> args)
    {
        if (args.Count == 0 || args[0] is "-h" or "--help" or "help")
        {
            throw new UsageException("");
        }

        var options = new BenchOptions { Command = args[0] };
        if (options.Command is not ("burst" or "steady" or "idle" or "suite" or "report" or "chaos"))
        {
            throw new UsageException($"unknown command '{options.Command}'");
        }

        for (var i = 1; i < args.Count; i++)
        {
            var name = args[i];
            string Value() => i + 1 < args.Count ? args[++i] : throw new UsageException($"{name} needs a value");
            int Int() => int.TryParse(Value(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v >= 0 ? v : throw new UsageException($"{name} needs a whole number ≥ 0");
            double Double() => double.TryParse(Value(), NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && v > 0 ? v : throw new UsageException($"{name} needs a number > 0");
            switch (name)
            {
                case "--workload" or "-w": options.WorkloadName = Value(); break;
                case "-n" or "--count": options.Count = Int(); break;
                case "--batch": options.Batch = Math.Max(1, Int()); break;
                case "--connections" or "-c": options.Connections = Math.Max(1, Int()); break;
                case "--rate": options.Rate = Double(); options.RateGiven = true; break;
                case "--duration": options.DurationSeconds = Double(); options.DurationGiven = true; break;
                case "--iterations": options.Iterations = Int(); break;
                case "--delay-ms": options.DelayMs = Int(); break;
                case "--quick": options.Quick = true; break;
                case "--url": options.Url = new Uri(Value()); break;
                case "--api-key": options.ApiKey = Value(); break;
                case "--redis": options.Redis = Value(); break;
                case "--downstream": options.Downstream = new Uri(Value()); break;
                case "--pid":
                    var pid = Value().Split('=', 2);
                    options.Pids[pid[0]] = pid.Length == 2 && int.TryParse(pid[1], out var p) ? p : throw new UsageException("--pid needs <name>=<pid>");
                    break;
                case "--set":
                    var setting = Value();
                    var colon = setting.IndexOf(':', StringComparison.Ordinal);
                    var eq = setting.IndexOf('=', StringComparison.Ordinal);
                    if (colon <= 0 || eq <= colon + 1)
                    {
                        throw new UsageException("--set needs <resource>:<ENV>=<value>");
                    }

                    options.Settings.Add((setting[..colon], setting[(colon + 1)..eq], setting[(eq + 1)..]));
                    break;
                case "--via-proxy": options.ViaProxy = true; break;
                case "--verbose": options.Verbose = true; break;
                case "--from": options.From = Value(); break;
                case "--out" or "-o": options.OutDirectory = Value(); break;
                case "--label": options.Label = Value(); break;
                case "--deadline": options.DeadlineSeconds = Double(); break;
                case "--ceiling-events": options.CeilingEvents = Math.Max(1, Int()); options.CeilingEventsGiven = true; break;
                case "--ceiling-rounds": options.CeilingRounds = Math.Max(1, Int()); break;
                case "--warmup": options.Warmup = Math.Max(0, Int()); break;
                case "--seed": options.Seed = Int(); break;
                case "--clients": options.Clients = Math.Max(1, Int()); break;
                case "--quiet": options.QuietSeconds = Double(); break;
                case "--topology":
                    options.Topology = Value().ToLowerInvariant() switch
                    {
                        "single" => "Single",
                        "cluster" => "Cluster",
                        var other => throw new UsageException($"--topology is single or cluster, not '{other}'"),
                    };
                    break;
                case "--majority-faults": options.MajorityFaults = true; break;
                default: throw new UsageException($"unknown option '{name}'");
            }
        }

        if (options.Batch > 1000)
        {
            throw new UsageException("--batch is at most 1000 (the API's MaxBatchEvents)");
        }

        if (options.Command == "chaos")
        {
            if (options.Url is not null)
            {
                throw new UsageException("chaos starts the system itself (it kills and restarts its processes): --url is not allowed");
            }

            // The mix needs test.fail, and the nemesis restarts the API: its proxied address survives a restart.
            options.TestEvents = true;
            options.ViaProxy = true;
            if (!options.DurationGiven)
            {
                options.DurationSeconds = 120;
            }

            options.AppHostArguments.Add($"Brokers:Topology={options.Topology}");
        }

        if (options.MajorityFaults && options.Topology != "Cluster")
        {
            throw new UsageException("--majority-faults needs --topology cluster (a single node down is all of it)");
        }

        if (options.Url is not null && string.IsNullOrEmpty(options.ApiKey))
        {
            throw new UsageException("--url needs --api-key (the submit key)");
        }

        return options;
    }
}

public sealed class UsageException(string message) : Exception(message);
