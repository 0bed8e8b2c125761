using System.Diagnostics;
using EventPipeline.Bench.Observe;

namespace EventPipeline.Bench.Report;

/// <summary>
/// One status line while a scenario runs: submitted, finished, lane depth and lag. Rewritten in place on a terminal,
/// printed every few seconds when the output goes to a file (CI logs).
/// </summary>
public sealed class ProgressLine(TextWriter output, string scenario, int total, Func<int> submitted, Func<int> finished, Func<LaneSample?> lanes) : IAsyncDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly bool _inPlace = !Console.IsErrorRedirected;
    private Task? _loop;

    public void Start(Stopwatch clock) => _loop = Task.Run(async () =>
    {
        using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(_inPlace ? 500 : 5000));
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token))
            {
                Write(clock);
            }
        }
        catch (OperationCanceledException)
        {
        }
    });

    private void Write(Stopwatch clock)
    {
        var l = lanes();
        var line = $"[{scenario}] {clock.Elapsed.TotalSeconds,6:F1}s  submitted {submitted(),7}/{total}  finished {finished(),7}" +
                   (l is null ? "" : $"  cpu depth {l.CpuDepth,6} lag {l.CpuLag,6}  io depth {l.IoDepth,6}");
        if (_inPlace)
        {
            output.Write("\r" + line.PadRight(110));
        }
        else
        {
            output.WriteLine(line);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        if (_loop is not null)
        {
            await _loop;
        }

        if (_inPlace)
        {
            output.WriteLine();
        }

        _stop.Dispose();
    }
}
