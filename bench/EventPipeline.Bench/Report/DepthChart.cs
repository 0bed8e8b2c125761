using EventPipeline.Bench.Observe;
using ScottPlot;

namespace EventPipeline.Bench.Report;

/// <summary>Queue depth and consumer lag of both lanes over the scenario, as a PNG (ScottPlot, rendered headless by SkiaSharp).</summary>
public static class DepthChart
{
    public const int Width = 1000;
    public const int Height = 450;

    public static void Render(IReadOnlyList<LaneSample> samples, string title, string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var plot = new Plot();
        var t = samples.Select(s => s.Seconds).ToArray();
        Add(plot, t, samples.Select(s => (double)s.CpuDepth).ToArray(), "cpu depth (stream + delayed)", Colors.Blue, LinePattern.Solid);
        Add(plot, t, samples.Select(s => (double)s.CpuLag).ToArray(), "cpu lag (not yet read)", Colors.Blue, LinePattern.Dashed);
        Add(plot, t, samples.Select(s => (double)s.IoDepth).ToArray(), "io depth (ready in events-io)", Colors.OrangeRed, LinePattern.Solid);
        plot.Title(title);
        plot.XLabel("seconds since the first submission");
        plot.YLabel("events");
        if (samples.Count == 0)
        {
            plot.Add.Annotation("no /lanes samples were taken");
        }

        plot.ShowLegend(Alignment.UpperRight);
        plot.Axes.SetLimits(0, Math.Max(1, t.DefaultIfEmpty(0).Max()), 0, Math.Max(10, samples.Select(s => Math.Max(s.CpuDepth, s.IoDepth)).DefaultIfEmpty(0).Max() * 1.1));
        plot.SavePng(path, Width, Height);
    }

    private static void Add(Plot plot, double[] xs, double[] ys, string label, Color color, LinePattern pattern)
    {
        if (xs.Length == 0)
        {
            return;
        }

        var line = plot.Add.ScatterLine(xs, ys);
        line.LegendText = label;
        line.Color = color;
        line.LineWidth = 2;
        line.LinePattern = pattern;
    }
}
