using System.Globalization;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Monitoring;

/// <summary>Ready and unacknowledged counts of one queue, as RabbitMQ's Prometheus plugin reports them.</summary>
public sealed record QueueCounts(long Ready, long Unacknowledged);

/// <summary>
/// Reads <c>/metrics/detailed?family=queue_coarse_metrics</c> from RabbitMQ's Prometheus plugin: the only place that
/// tells unacknowledged (delivered, not yet finished) messages per queue. AMQP's passive declare reports ready ones
/// only. The plugin refreshes its numbers every few seconds (<c>collect_statistics_interval</c>), so they lag a little.
/// </summary>
public sealed class RabbitMqQueueMetrics(HttpClient http, IOptions<LaneMonitorOptions> options, ILogger<RabbitMqQueueMetrics> logger)
{
    public bool IsConfigured => options.Value.RabbitMqPrometheusUrl is not null;

    /// <returns>each queue's counts (null for a queue the plugin does not list), or null when the plugin is not
    /// configured or unreachable. One scrape serves every queue asked for: the lane reading asks for the lane and its
    /// error queue together, and the scrape is the costly part (it runs every sample interval).</returns>
    public async Task<QueueCounts?[]?> ReadAsync(IReadOnlyList<string> queues, CancellationToken cancellationToken)
    {
        if (options.Value.RabbitMqPrometheusUrl is not { } baseUrl)
        {
            return null;
        }

        try
        {
            var url = new Uri(baseUrl, "/metrics/detailed?family=queue_coarse_metrics");
            var text = await http.GetStringAsync(url, cancellationToken);
            var lines = text.Split('\n');
            return [.. queues.Select(queue => Parse(lines, queue))];
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException && !cancellationToken.IsCancellationRequested)
        {
            logger.LogDebug(ex, "RabbitMQ's Prometheus endpoint did not answer; the I/O lane's pending count is unknown");
            return null;
        }
    }

    internal static QueueCounts? Parse(string text, string queue) => Parse(text.Split('\n'), queue);

    private static QueueCounts? Parse(string[] lines, string queue)
    {
        long? ready = null, unacked = null;
        var label = $"queue=\"{queue}\"";
        foreach (var line in lines)
        {
            if (line.StartsWith('#') || !line.Contains(label, StringComparison.Ordinal))
            {
                continue;
            }

            var value = ParseValue(line);
            if (line.StartsWith("rabbitmq_detailed_queue_messages_ready{", StringComparison.Ordinal))
            {
                ready = value;
            }
            else if (line.StartsWith("rabbitmq_detailed_queue_messages_unacked{", StringComparison.Ordinal))
            {
                unacked = value;
            }
        }

        return ready is { } r && unacked is { } u ? new QueueCounts(r, u) : null;
    }

    private static long? ParseValue(string line)
    {
        var space = line.LastIndexOf(' ');
        return space > 0 && double.TryParse(line.AsSpan(space + 1), NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? (long)v : null;
    }
}
