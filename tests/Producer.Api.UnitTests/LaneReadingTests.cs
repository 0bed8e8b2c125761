using EventPipeline.Producer.Monitoring;

namespace EventPipeline.Producer.UnitTests;

public sealed class LaneReadingTests
{
    private const string Scrape = """
        # TYPE rabbitmq_detailed_queue_messages_ready gauge
        rabbitmq_detailed_queue_messages_ready{vhost="/",queue="events-io"} 7
        rabbitmq_detailed_queue_messages_ready{vhost="/",queue="events-io_error"} 2
        rabbitmq_detailed_queue_messages_unacked{vhost="/",queue="events-io_error"} 0
        rabbitmq_detailed_queue_messages_unacked{vhost="/",queue="events-io"} 3
        rabbitmq_detailed_queue_messages{vhost="/",queue="events-io"} 10
        """;

    [Fact]
    public void Unacknowledged_count_is_read_for_the_named_queue_only()
    {
        var counts = RabbitMqQueueMetrics.Parse(Scrape, "events-io");

        Assert.Equal(new QueueCounts(7, 3), counts);
        Assert.Equal(new QueueCounts(2, 0), RabbitMqQueueMetrics.Parse(Scrape, "events-io_error"));
    }

    [Fact]
    public void Queue_missing_from_the_scrape_is_unknown_not_zero() =>
        Assert.Null(RabbitMqQueueMetrics.Parse(Scrape, "other"));
}
