using EventPipeline.Bench;

using var cancel = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) =>
{
    e.Cancel = true; // stop the run and the AppHost it started, instead of leaving brokers behind
    cancel.Cancel();
};
return await BenchApp.RunAsync(args, Console.Out, Console.Error, cancel.Token);
