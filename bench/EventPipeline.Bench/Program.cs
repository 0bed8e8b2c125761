using EventPipeline.Bench;
using EventPipeline.Bench.Load;

// Before any socket exists in this process: the runtime fixes the mode when it creates its socket engine.
var inline = InlineSocketCompletions.Enable();
using var cancel = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) =>
{
    e.Cancel = true; // stop the run and the AppHost it started, instead of leaving brokers behind
    cancel.Cancel();
};
Console.Error.WriteLine($"bench client: socket completions {(inline ? "inline on the epoll threads" : "on the thread pool")}, tiered compilation {(AppContext.TryGetSwitch("System.Runtime.TieredCompilation", out var tc) && !tc ? "off" : "on")}");
return await BenchApp.RunAsync(args, Console.Out, Console.Error, cancel.Token);
