using System.Diagnostics;
using System.Net;
using EventPipeline.Testing;
using StackExchange.Redis;
using Xunit.Abstractions;

namespace EventPipeline.Worker.Cpu.FunctionalTests;

/// <summary>
/// The <see cref="RedisSentinelSet"/> fixture itself, on real processes: what made its start fail on a loaded machine.
/// </summary>
public sealed class RedisSentinelSetTests(ITestOutputHelper output)
{
    /// <summary>
    /// A Sentinel stalled for over 2 s enters TILT and skips its down checks until the TILT period ends, so a peer it had
    /// marked <c>s_down</c> just before stays so: with Redis's 30 s default, its CKQUORUM failed for 30 s after each
    /// stall, and the set's start (which waits for CKQUORUM on every Sentinel) timed out on a loaded CI machine. Here the
    /// peers are paused until the first Sentinel marks them down, then it is paused past the TILT trigger.
    /// </summary>
    [Fact]
    public async Task A_sentinel_stalled_right_after_marking_its_peers_down_reaches_quorum_again_within_seconds_of_its_tilt()
    {
        await using var set = await RedisSentinelSet.StartAsync();
        var (first, peers) = (set.SentinelPorts[0], set.SentinelPorts.Skip(1).ToArray());
        await using var connection = await set.ConnectSentinelAsync(first);
        var sentinel = connection.GetServer(IPAddress.Loopback, first);

        var resumed = Stopwatch.StartNew();
        await using (var peer1 = ProcessPause.Of(set.PidOf(peers[0])))
        await using (var peer2 = ProcessPause.Of(set.PidOf(peers[1])))
        {
            await Eventually.TrueAsync(async () => (await sentinel.SentinelSentinelsAsync(RedisSentinelSet.ServiceName))
                    .Count(s => s.Single(f => f.Key == "flags").Value.Contains("s_down", StringComparison.Ordinal)) == 2,
                TimeSpan.FromSeconds(30), $"the sentinel on {first} to mark both paused peers s_down", TimeSpan.FromMilliseconds(100));

            // The stall: its length is the test's input (over Sentinel's 2 s TILT trigger), not a wait for a condition.
            // The peers answer again while it is stalled, so all that keeps them s_down afterwards is the TILT.
            await using var stalled = ProcessPause.Of(set.PidOf(first));
            peer1.Resume();
            peer2.Resume();
            await Task.Delay(TimeSpan.FromMilliseconds(2500));
            stalled.Resume();
            resumed.Restart();
        }

        await Eventually.TrueAsync(() => Task.FromResult(set.OutputOf(first).Any(l => l.Contains("+tilt", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(10), $"the sentinel on {first} to enter TILT after its stall");
        var budget = RedisSentinelSet.TiltPeriod + TimeSpan.FromSeconds(15);
        await Eventually.TrueAsync(async () =>
            ((string?)await sentinel.ExecuteAsync("SENTINEL", "CKQUORUM", RedisSentinelSet.ServiceName))?.StartsWith("OK", StringComparison.Ordinal) == true,
            budget, $"CKQUORUM OK on the sentinel on {first} after its TILT (Redis's default TILT period is 30 s)", TimeSpan.FromMilliseconds(200));
        output.WriteLine($"CKQUORUM OK {resumed.Elapsed.TotalSeconds:F1} s after the stall\n{string.Join('\n', set.OutputOf(first).TakeLast(6))}");
    }
}
