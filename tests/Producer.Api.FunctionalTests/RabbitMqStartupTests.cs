using System.Net;
using System.Text;
using EventPipeline.Testing;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// The API's own RabbitMQ connection (Aspire's <c>AddRabbitMQClient</c>) is opened on first use: an API started while
/// RabbitMQ is down starts, stays live, answers 503 for the I/O lane, and works once the broker is up, without a restart.
/// </summary>
public sealed class RabbitMqStartupTests : IAsyncLifetime
{
    private RedisServer _redis = null!;
    private RabbitMqServer _rabbit = null!;
    private ChildProcess? _api;

    public async Task InitializeAsync()
    {
        var redis = RedisServer.StartAsync();
        var rabbit = RabbitMqServer.StartOrTakeSpareAsync();
        (_redis, _rabbit) = (await redis, await rabbit);
        await _rabbit.StopAsync();
    }

    public async Task DisposeAsync()
    {
        if (_api is not null)
        {
            await _api.DisposeAsync();
        }

        await _rabbit.DisposeAsync();
        await _redis.DisposeAsync();
    }

    [Fact]
    public async Task Api_started_while_rabbitmq_is_down_is_live_answers_503_and_works_once_rabbitmq_is_up()
    {
        _api = ServiceProcess.Start("Producer.Api", new Dictionary<string, string?>
        {
            ["ConnectionStrings__redis"] = _redis.ConnectionString,
            ["ConnectionStrings__rabbitmq"] = _rabbit.ConnectionString,
            ["Auth__ApiKeys__Submit"] = PipelineHost.SubmitKey,
            ["Auth__ApiKeys__Admin"] = PipelineHost.AdminKey,
            ["Logging__LogLevel__Default"] = "Warning",
        }, out var port);
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(30) };
        http.DefaultRequestHeaders.Add("X-Api-Key", PipelineHost.AdminKey);
        using var submit = new HttpClient { BaseAddress = http.BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
        submit.DefaultRequestHeaders.Add("X-Api-Key", PipelineHost.SubmitKey);
        string Output() => string.Join("\n", _api.Output.TakeLast(40));

        await Eventually.TrueAsync(async () =>
        {
            Assert.False(_api.HasExited, $"the API exited while RabbitMQ was down:\n{Output()}");
            return await StatusOfAsync(http, "/health/live") == HttpStatusCode.OK;
        }, TimeSpan.FromSeconds(90), "the API to be live while RabbitMQ is down", TimeSpan.FromMilliseconds(200));

        Assert.Equal(HttpStatusCode.ServiceUnavailable, await StatusOfAsync(http, "/health/ready"));
        using (var io = await SubmitAsync(submit, "noop.io"))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, io.StatusCode);
            Assert.True(io.Headers.Contains("Retry-After"));
        }

        using (var cpu = await SubmitAsync(submit, "noop.cpu"))
        {
            Assert.Equal(HttpStatusCode.Accepted, cpu.StatusCode);
        }

        Assert.Equal(HttpStatusCode.ServiceUnavailable, await StatusOfAsync(http, "/dead-letters/io"));
        Assert.False(_api.HasExited, Output());

        await _rabbit.StartServerAsync();
        await Eventually.TrueAsync(async () => await StatusOfAsync(http, "/health/ready") == HttpStatusCode.OK,
            TimeSpan.FromSeconds(60), $"the API to be ready once RabbitMQ is up", TimeSpan.FromMilliseconds(500));
        await Eventually.TrueAsync(async () =>
        {
            using var io = await SubmitAsync(submit, "noop.io");
            return io.StatusCode == HttpStatusCode.Accepted;
        }, TimeSpan.FromSeconds(60), "I/O submissions to be accepted once RabbitMQ is up", TimeSpan.FromMilliseconds(500));
        Assert.Equal(HttpStatusCode.OK, await StatusOfAsync(http, "/dead-letters/io"));
        Assert.Equal(HttpStatusCode.OK, await StatusOfAsync(http, "/lanes"));
    }

    private static async Task<HttpStatusCode> StatusOfAsync(HttpClient http, string path)
    {
        using var response = await http.GetAsync(path);
        return response.StatusCode;
    }

    private static Task<HttpResponseMessage> SubmitAsync(HttpClient http, string type) =>
        http.PostAsync("/events", new StringContent($$$"""{"type":"{{{type}}}","payload":{}}""", Encoding.UTF8, "application/json"));
}
