using System.Text.Json;

namespace EventPipeline.Worker.Cpu.UnitTests;

/// <summary>
/// The worker's runtime settings that its cost per event depends on (Worker.Cpu.csproj): read from the
/// runtimeconfig.json the build writes beside Worker.Cpu.dll, which is what the runtime reads at start.
/// </summary>
public sealed class RuntimeSettingsTests
{
    [Fact]
    public void Idle_thread_pool_threads_do_not_spin_on_the_cores_the_computation_needs()
    {
        var path = Path.Combine(AppContext.BaseDirectory, "Worker.Cpu.runtimeconfig.json");
        using var config = JsonDocument.Parse(File.ReadAllText(path));
        var properties = config.RootElement.GetProperty("runtimeOptions").GetProperty("configProperties");
        Assert.True(properties.TryGetProperty("System.Threading.ThreadPool.UnfairSemaphoreSpinLimit", out var spinLimit),
            $"{path} does not set System.Threading.ThreadPool.UnfairSemaphoreSpinLimit: idle pool threads spin up to 70 times for work, on the cores PBKDF2 runs on (docs/benchmarks.md, \"Session 7: CPU lane\")");
        Assert.Equal(0, spinLimit.GetInt32());
    }
}
