using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json.Serialization;

namespace EventPipeline.Bench.Observe;

/// <summary>One reading of <c>GET /lanes</c>, <see cref="Seconds"/> after the scenario started.</summary>
public sealed record LaneSample(double Seconds, long CpuDepth, long CpuLag, long CpuPending, long IoDepth, long IoLag);

/// <summary>
/// Samples <c>GET /lanes</c> every 100 ms while a scenario runs (every 500 ms after its first 3 s): queue depth and
/// consumer lag over time. Each reading costs the API a read of both brokers (RabbitMQ's Prometheus page included),
/// which a long scenario such as the PBKDF2 burst would otherwise pay ten times a second out of the cores it is
/// measured on.
/// </summary>
public sealed class LaneSampler(HttpClient api, TimeSpan interval) : IAsyncDisposable
{
    private static readonly TimeSpan DenseFor = TimeSpan.FromSeconds(3);
    private static readonly TimeSpan SparseInterval = TimeSpan.FromMilliseconds(500);

    private readonly List<LaneSample> _samples = [];
    private readonly CancellationTokenSource _stop = new();
    private Task? _loop;

    public LaneSample? Latest { get; private set; }

    public int Failures { get; private set; }

    public IReadOnlyList<LaneSample> Samples
    {
        get
        {
            lock (_samples)
            {
                return [.. _samples];
            }
        }
    }

    public void Start(Stopwatch clock) => _loop = Task.Run(() => LoopAsync(clock, _stop.Token));

    private async Task LoopAsync(Stopwatch clock, CancellationToken cancellationToken)
    {
        using var timer = new PeriodicTimer(interval);
        var last = TimeSpan.MinValue;
        do
        {
            if (clock.Elapsed > DenseFor && clock.Elapsed - last < SparseInterval - interval / 2)
            {
                continue;
            }

            last = clock.Elapsed;
            try
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                timeout.CancelAfter(TimeSpan.FromSeconds(5));
                var at = clock.Elapsed.TotalSeconds;
                var lanes = await api.GetFromJsonAsync<LanesDto>("/lanes", timeout.Token);
                var cpu = lanes?.Lanes.FirstOrDefault(l => l.Name == "cpu");
                var io = lanes?.Lanes.FirstOrDefault(l => l.Name == "io");
                var sample = new LaneSample(at, cpu?.Depth ?? 0, cpu?.Lag ?? 0, cpu?.Pending ?? 0, io?.Depth ?? 0, io?.Lag ?? 0);
                lock (_samples)
                {
                    _samples.Add(sample);
                }

                Latest = sample;
            }
            catch (Exception ex) when (ex is HttpRequestException or OperationCanceledException or System.Text.Json.JsonException && !cancellationToken.IsCancellationRequested)
            {
                Failures++; // a slow or failed reading is a gap in the chart, not the end of the run
            }
        }
        while (await SafeWaitAsync(timer, cancellationToken));
    }

    private static async Task<bool> SafeWaitAsync(PeriodicTimer timer, CancellationToken cancellationToken)
    {
        try
        {
            return await timer.WaitForNextTickAsync(cancellationToken);
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        if (_loop is not null)
        {
            try
            {
                await _loop;
            }
            catch (OperationCanceledException)
            {
            }
        }

        _stop.Dispose();
    }

    private sealed record LanesDto([property: JsonPropertyName("lanes")] List<LaneDto> Lanes);

    private sealed record LaneDto(
        [property: JsonPropertyName("name")] string Name,
        [property: JsonPropertyName("depth")] long Depth,
        [property: JsonPropertyName("lag")] long Lag,
        [property: JsonPropertyName("pending")] long? Pending); // null where the broker cannot tell (see GET /lanes)
}
