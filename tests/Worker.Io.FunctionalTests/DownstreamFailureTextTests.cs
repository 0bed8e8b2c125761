using System.Net.Sockets;
using EventPipeline.Worker.Io.Delivery;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// Whatever way HttpClient fails to get an HTTP response, the event's status says the same thing, "downstream unreachable
/// (no HTTP response)": a socket error's text would tell a closed port from an open one (DownstreamClient's remarks).
/// SocketsHttpHandler itself lets a SocketException out unwrapped when a downstream resets the connection right after
/// accepting it (CI of session 16: "SocketException: Transport endpoint is not connected" in the status of an event sent
/// to such a port, in <c>DownstreamOriginTests.Error_text_of_a_closed_port_equals_that_of_an_open_port_that_fails</c>).
/// That race is rare against a real socket, so the client's failures are given here by a handler that throws them.
/// </summary>
public sealed class DownstreamFailureTextTests
{
    public static TheoryData<string> Failures => ["refused", "not-connected", "reset-io"];

    private static Exception Failure(string kind) => kind switch
    {
        // What SocketsHttpHandler throws for a closed port.
        "refused" => new HttpRequestException(HttpRequestError.ConnectionError, "Connection refused (127.0.0.1:9)", new SocketException((int)SocketError.ConnectionRefused)),
        // What it let out unwrapped in that CI run.
        "not-connected" => new SocketException((int)SocketError.NotConnected),
        "reset-io" => new IOException("Unable to read data from the transport connection: Connection reset by peer.", new SocketException((int)SocketError.ConnectionReset)),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    [Theory]
    [MemberData(nameof(Failures))]
    public async Task A_call_that_got_no_http_response_reads_unreachable_whatever_the_client_threw(string kind)
    {
        var options = Options.Create(new DownstreamOptions { BaseAddress = new Uri("http://127.0.0.1:9"), Path = "/hook" });
        using var client = new DownstreamClient(new HttpClient(new ThrowingHandler(Failure(kind))), options, NullLogger<DownstreamClient>.Instance);

        var thrown = await Record.ExceptionAsync(() => client.DeliverAsync("evt-1", "{}", null, CancellationToken.None));

        var transient = Assert.IsType<TransientDownstreamException>(thrown);
        Assert.Equal(DownstreamClient.Unreachable, transient.Message);
    }

    private sealed class ThrowingHandler(Exception failure) : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            Task.FromException<HttpResponseMessage>(failure);
    }
}
