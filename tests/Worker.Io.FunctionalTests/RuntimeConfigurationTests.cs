using System.Text.Json;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// Worker.Io's GC settings live only in its <c>Worker.Io.runtimeconfig.json</c> (made from Worker.Io.csproj): without
/// background GC its bursts paused far less (docs/io-lane.md, "Configuration (Worker.Io)"), and without the generation-0
/// cap that GC let worker-io grow to 254-272 MB under a 100,000-event batch ingest instead of 160-206 MB. No other test
/// would notice a lost line there.
/// </summary>
public sealed class RuntimeConfigurationTests
{
    [Fact]
    public void Worker_io_runs_workstation_GC_without_background_GC_and_a_generation_0_budget_of_at_most_32_MiB()
    {
        // The SDK copies a referenced executable's runtimeconfig.json next to the test assembly.
        var path = Path.Combine(AppContext.BaseDirectory, "Worker.Io.runtimeconfig.json");
        using var document = JsonDocument.Parse(File.ReadAllText(path));
        var properties = document.RootElement.GetProperty("runtimeOptions").GetProperty("configProperties");

        Assert.False(properties.GetProperty("System.GC.Server").GetBoolean());
        Assert.False(properties.GetProperty("System.GC.Concurrent").GetBoolean());
        Assert.True(properties.TryGetProperty("System.GC.Gen0MaxBudget", out var budget),
            "Worker.Io.runtimeconfig.json has no System.GC.Gen0MaxBudget: the non-concurrent GC sizes generation 0 far larger");
        Assert.InRange(budget.GetInt64(), 1L, 32L * 1024 * 1024);
    }
}
