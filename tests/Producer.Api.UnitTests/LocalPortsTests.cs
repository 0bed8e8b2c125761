using EventPipeline.Testing;

namespace EventPipeline.Producer.UnitTests;

/// <summary>
/// The test fixtures' ports (<see cref="LocalPorts.Free"/>) come from outside the kernel's ephemeral range, which Aspire's
/// DCP allocates an AppHost's ports from (and every outgoing connection takes its own from), and from a block no other
/// test process can claim: with two test projects running at once (<c>eng/test.sh</c>), a port picked by binding port 0
/// could be handed to both before either bound it.
/// </summary>
public sealed class LocalPortsTests
{
    [Fact]
    public void A_free_port_is_outside_the_ephemeral_range_in_a_block_this_process_holds()
    {
        var range = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[])['\t', ' ', '\n'], StringSplitOptions.RemoveEmptyEntries);
        var (low, high) = (int.Parse(range[0]), int.Parse(range[1]));

        var ports = Enumerable.Range(0, 3).Select(_ => LocalPorts.Free()).ToList();

        Assert.All(ports, port => Assert.False(port >= low && port <= high, $"port {port} is in the ephemeral range {low}–{high}"));
        // Nor where an AppHost picks its brokers' ports (20000 up to the ephemeral range).
        Assert.All(ports, port => Assert.InRange(port, 1024, 19999));
        Assert.Equal(ports.Count, ports.Distinct().Count());
        foreach (var port in ports)
        {
            // Another opener (another test process) cannot claim the block: it is locked for this process's life.
            var block = Path.Combine(Path.GetTempPath(), "ep-test-ports", $"block-{(port - LocalPorts.RangeStart) / LocalPorts.BlockSize}");
            Assert.Throws<IOException>(() => new FileStream(block, FileMode.Open, FileAccess.ReadWrite, FileShare.None).Dispose());
        }
    }
}
