using System.Text.Json;

namespace EventPipeline.Producer.UnitTests;

/// <summary>
/// The API's memory through a 100,000-event batch ingest depends on GC settings that live only in its
/// <c>Producer.Api.runtimeconfig.json</c> (made from Producer.Api.csproj): a lost line there raises its peak RSS by tens of
/// megabytes and no other test would notice (docs/operations.md, "Memory").
/// </summary>
public sealed class RuntimeConfigurationTests
{
    // The SDK copies a referenced executable's runtimeconfig.json next to the test assembly.
    private static JsonElement ConfigProperties()
    {
        var path = Path.Combine(AppContext.BaseDirectory, "Producer.Api.runtimeconfig.json");
        using var document = JsonDocument.Parse(File.ReadAllText(path));
        return document.RootElement.GetProperty("runtimeOptions").GetProperty("configProperties").Clone();
    }

    [Fact]
    public void The_API_runs_with_workstation_GC_at_conserve_memory_9_and_a_generation_0_budget_of_at_most_6_MiB()
    {
        var properties = ConfigProperties();

        Assert.False(properties.GetProperty("System.GC.Server").GetBoolean());
        Assert.Equal(9, properties.GetProperty("System.GC.ConserveMemory").GetInt32());
        // The runtime's name for it: System.GC.Gen0MaxBudget (System.GC.Gen0Size and GCgen0size are not read from
        // runtimeconfig.json by .NET 10; docs/benchmarks-history.md, "Session 7: API memory"). Without it the budget is sized from
        // the L3 cache: 16 MiB on the 32 MiB-L3 machines the bench runs on.
        Assert.True(properties.TryGetProperty("System.GC.Gen0MaxBudget", out var budget),
            "Producer.Api.runtimeconfig.json has no System.GC.Gen0MaxBudget: the generation-0 budget is sized from the L3 cache");
        Assert.InRange(budget.GetInt64(), 1L, 6L * 1024 * 1024);
    }

    [Fact]
    public void The_API_runs_with_GC_regions_of_1_MiB()
    {
        // Unset, a region is 4 MiB: the heap commits and keeps memory in 4 MiB steps. .NET 10 reads System.GC.RegionSize
        // from runtimeconfig.json (GC.GetConfigurationVariables()["GCRegionSize"]; docs/benchmarks-history.md, "Session 8: API memory").
        var properties = ConfigProperties();

        Assert.True(properties.TryGetProperty("System.GC.RegionSize", out var size),
            "Producer.Api.runtimeconfig.json has no System.GC.RegionSize: the GC uses 4 MiB regions");
        Assert.Equal(1024 * 1024, size.GetInt64());
    }
}
