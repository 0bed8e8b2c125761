using EventPipeline.Worker.Cpu.Lane;

namespace EventPipeline.Worker.Cpu.UnitTests;

/// <summary>
/// How the stopping lane finds its own blocked read in CLIENT LIST (StreamEntryReader.UnblockAsync): by its exact client
/// name and Redis's blocked flag, never another reader's (another process's name, or an instance of this one whose
/// number begins the same) and never a client that is not blocked.
/// </summary>
public sealed class BlockedReaderLookupTests
{
    private const string Name = "worker-cpu-reader-host-42-1";

    [Theory]
    // Lines as redis-server 7.0 writes them (CLIENT LIST TYPE normal).
    [InlineData("id=3 addr=127.0.0.1:57560 laddr=127.0.0.1:16401 fd=8 name=worker-cpu-reader-host-42-1 age=0 idle=0 flags=b db=0 cmd=xreadgroup user=default resp=2", 3L)]
    [InlineData("id=3 addr=127.0.0.1:57560 fd=8 name=worker-cpu-reader-host-42-1 age=4 idle=4 flags=N db=0 cmd=xreadgroup user=default", null)]
    [InlineData("id=7 addr=127.0.0.1:57561 fd=9 name=worker-cpu-reader-host-42-12 age=0 idle=0 flags=b db=0 cmd=xreadgroup user=default", null)]
    [InlineData("id=8 addr=127.0.0.1:57562 fd=10 name=worker-cpu-reader-host-43-1 age=0 idle=0 flags=b db=0 cmd=xreadgroup user=default", null)]
    [InlineData("id=9 addr=127.0.0.1:57563 fd=11 name= age=0 idle=0 flags=b db=0 cmd=wait user=default", null)]
    public void Only_this_readers_blocked_connection_is_chosen(string line, long? expected) =>
        Assert.Equal(expected, StreamEntryReader.BlockedClientId(line, Name));
}
