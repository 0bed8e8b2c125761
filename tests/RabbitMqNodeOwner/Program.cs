using EventPipeline.Testing;

// A fixture's node (taken as a spare or booted in the open), then the next spare booting behind it, exactly as a test
// host gets them. Prints one line per node as soon as its processes exist, then waits to be killed.
var node = await RabbitMqServer.StartOrTakeSpareAsync();
Console.WriteLine($"node {node.Pid} {node.EpmdPid} {node.DataDirectory}");
Console.WriteLine("ready");
await Task.Delay(Timeout.Infinite);
