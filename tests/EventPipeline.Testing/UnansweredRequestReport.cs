namespace EventPipeline.Testing;

/// <summary>
/// Turns a request the service under test left unanswered past the client's timeout into a failure that says what the
/// service was doing: whether its process still runs, and the last lines it wrote. A bare "the request was canceled"
/// from HttpClient left a one-off CI failure (an io dead-letter delete-all unanswered for 30 s, session 17) with nothing
/// to go on.
/// </summary>
public sealed class UnansweredRequestReport(ChildProcess service, TimeSpan timeout) : DelegatingHandler(new HttpClientHandler())
{
    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        var started = DateTimeOffset.UtcNow;
        try
        {
            return await base.SendAsync(request, deadline.Token);
        }
        catch (OperationCanceledException ex) when (!cancellationToken.IsCancellationRequested && deadline.IsCancellationRequested)
        {
            throw new TimeoutException(
                $"{request.Method} {request.RequestUri?.PathAndQuery} got no answer from {service.Name} (pid {service.Pid}, "
                + $"{(service.HasExited ? $"exited with {service.ExitCode}" : "running")}) within {timeout.TotalSeconds:F0} s "
                + $"(sent {started:HH:mm:ss.fff} UTC); its last output:\n{string.Join('\n', service.Output.TakeLast(40))}", ex);
        }
    }
}
