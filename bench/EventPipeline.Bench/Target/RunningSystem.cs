using EventPipeline.Bench.Cli;
using EventPipeline.Bench.Observe;

namespace EventPipeline.Bench.Target;

/// <summary>A system someone else started: URLs and keys from the command line, processes by <c>--pid</c> or by name.</summary>
public static class RunningSystem
{
    private static readonly Dictionary<string, string> CommandLineMarkers = new(StringComparer.Ordinal)
    {
        ["producer-api"] = "Producer.Api",
        ["worker-cpu"] = "Worker.Cpu",
        ["worker-io"] = "Worker.Io",
        ["downstream"] = "Downstream.Receiver",
        ["redis"] = "redis-server",
        ["rabbitmq"] = "beam.smp",
    };

    public static PipelineTarget Connect(BenchOptions options, TextWriter log)
    {
        var pids = new Dictionary<string, int>(options.Pids, StringComparer.Ordinal);
        foreach (var (resource, marker) in CommandLineMarkers)
        {
            if (pids.ContainsKey(resource) || !ProcFs.IsAvailable)
            {
                continue;
            }

            // Skip `dotnet build`/`dotnet run` launchers and this tool: only the service process itself counts.
            var found = ProcFs.FindByCommandLine(marker)
                .Where(pid => !ProcFs.CommandLine(pid).Contains(" run ", StringComparison.Ordinal)
                              && !ProcFs.CommandLine(pid).Contains(" build", StringComparison.Ordinal))
                .ToList();
            if (found.Count == 1)
            {
                pids[resource] = found[0];
            }
            else
            {
                log.WriteLine($"note: {found.Count} processes match '{marker}'; pass --pid {resource}=<pid> to measure {resource}");
            }
        }

        return new PipelineTarget(options.Url!, options.ApiKey!, options.Redis, options.Downstream, pids, $"running system at {options.Url}");
    }
}
