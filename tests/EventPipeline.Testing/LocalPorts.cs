using System.Net;
using System.Net.Sockets;

namespace EventPipeline.Testing;

public static class LocalPorts
{
    /// <summary>
    /// The test processes' own ports: below the kernel's ephemeral range (32768–60999 here), which every bind to port 0
    /// and every outgoing connection draw from, and below 20000, where an AppHost picks its brokers' ports
    /// (<c>LocalProcessResources.FreeLoopbackPort</c>, 20000 up to the ephemeral range).
    /// </summary>
    /// <remarks>
    /// A port found free by binding port 0 was one the kernel could hand to anyone a moment later: Aspire's DCP allocates
    /// the ports of an AppHost's services and brokers the same way and binds them seconds later, when each process
    /// starts (the services' ports; the brokers' it picks above 20000), and a test broker of another test project
    /// (<c>eng/test.sh</c> runs two at once) could take such a port in between, or be taken from. Here each test process claims whole blocks of this range with an exclusive lock
    /// on a file per block (released by the kernel when the process ends, however it ends), hands out the block's
    /// ports once each, and checks each is free before handing it out. No library does this: the port a server will
    /// bind later can only be reserved by agreement among the processes that pick it.
    /// </remarks>
    public const int RangeStart = 10000, RangeEnd = 20000, BlockSize = 64;

    private static readonly Lock Gate = new();
    private static readonly List<FileStream> Claimed = [];
    private static int s_next, s_end;

    /// <summary>A port nothing listens on right now, on 127.0.0.1, and that no other test process will be given.</summary>
    public static int Free()
    {
        lock (Gate)
        {
            while (true)
            {
                if (s_next == s_end)
                {
                    ClaimBlock();
                }

                var port = s_next++;
                if (CanBind(port))
                {
                    return port;
                }
            }
        }
    }

    private static void ClaimBlock()
    {
        var directory = Path.Combine(Path.GetTempPath(), "ep-test-ports");
        Directory.CreateDirectory(directory);
        var blocks = (RangeEnd - RangeStart) / BlockSize;
        var first = Random.Shared.Next(blocks);
        for (var i = 0; i < blocks; i++)
        {
            var block = (first + i) % blocks;
            FileStream claim;
            try
            {
                // FileShare.None is an exclusive flock on Linux: another process's claim of this block fails here.
                claim = new FileStream(Path.Combine(directory, $"block-{block}"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException)
            {
                continue;
            }

            Claimed.Add(claim); // held for the life of the process
            s_next = RangeStart + (block * BlockSize);
            s_end = s_next + BlockSize;
            return;
        }

        throw new InvalidOperationException($"every block of test ports {RangeStart}–{RangeEnd - 1} is claimed (by {Claimed.Count} of this process's and others')");
    }

    private static bool CanBind(int port)
    {
        try
        {
            using var listener = new TcpListener(IPAddress.Loopback, port);
            listener.Start();
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    public static bool Accepts(int port)
    {
        try
        {
            using var client = new TcpClient();
            client.Connect(IPAddress.Loopback, port);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }
}

/// <summary>A directory under the system temp folder, deleted on dispose.</summary>
public sealed class ScratchDirectory : IDisposable
{
    public ScratchDirectory(string prefix)
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
