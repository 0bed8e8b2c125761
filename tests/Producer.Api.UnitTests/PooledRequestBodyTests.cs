using EventPipeline.Producer.Ingest;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.UnitTests;

/// <summary>
/// A body is charged to the in-flight budget for the buffers it really holds, rented no larger than needed, and gives
/// them back when it is refused or disposed.
/// </summary>
public sealed class PooledRequestBodyTests
{
    private const int FourMiB = 4 * 1024 * 1024;

    private static InFlightIngestBudget Budget(long limit) =>
        new(Options.Create(new BackpressureOptions { MaxInFlightBytes = limit }));

    [Fact]
    public async Task A_body_with_a_Content_Length_holds_exactly_that_many_bytes_of_the_budget()
    {
        var budget = Budget(32L * 1024 * 1024);
        var (body, outcome) = await PooledRequestBody.ReadAsync(new MemoryStream(new byte[FourMiB]), FourMiB, FourMiB, budget, TimeSpan.FromSeconds(30), CancellationToken.None);

        Assert.Equal(PooledRequestBody.Outcome.Read, outcome);
        Assert.Equal(FourMiB, body!.Length);
        // The old code rented Content-Length + 1, which the pool rounds up to the next power of two: 8 MiB for 4 MiB.
        Assert.Equal(FourMiB, budget.Held);
        body.Dispose();
        Assert.Equal(0, budget.Held);
    }

    [Fact]
    public async Task A_body_past_the_budget_is_refused_and_gives_back_what_it_held()
    {
        var budget = Budget(256 * 1024);
        Assert.True(budget.TryReserve(200 * 1024)); // another submission's body

        var (body, outcome) = await PooledRequestBody.ReadAsync(new MemoryStream(new byte[100 * 1024]), null, FourMiB, budget, TimeSpan.FromSeconds(30), CancellationToken.None);

        Assert.Equal(PooledRequestBody.Outcome.OverBudget, outcome);
        Assert.Null(body);
        Assert.Equal(200 * 1024, budget.Held);
    }

    [Fact]
    public async Task A_body_alone_is_never_refused_for_the_budget()
    {
        var budget = Budget(64 * 1024);
        var (body, outcome) = await PooledRequestBody.ReadAsync(new MemoryStream(new byte[FourMiB]), null, FourMiB, budget, TimeSpan.FromSeconds(30), CancellationToken.None);

        Assert.Equal(PooledRequestBody.Outcome.Read, outcome);
        using (body)
        {
            Assert.Equal(FourMiB, body!.Length);
            Assert.Equal(FourMiB, budget.Held); // no Content-Length: still no buffer past the limit itself
        }

        Assert.Equal(0, budget.Held);
    }

    [Fact]
    public async Task A_body_without_Content_Length_one_byte_past_the_limit_is_too_large_and_holds_nothing()
    {
        var budget = Budget(32L * 1024 * 1024);
        var (body, outcome) = await PooledRequestBody.ReadAsync(new MemoryStream(new byte[FourMiB + 1]), null, FourMiB, budget, TimeSpan.FromSeconds(30), CancellationToken.None);

        Assert.Equal(PooledRequestBody.Outcome.TooLarge, outcome);
        Assert.Null(body);
        Assert.Equal(0, budget.Held);
    }

    [Fact]
    public async Task A_body_that_stops_arriving_times_out_and_gives_back_what_it_held()
    {
        var budget = Budget(32L * 1024 * 1024);
        // 20 KiB arrive, then nothing (the writer stays open): a client that announced 4 MiB and stalled.
        var pipe = new System.IO.Pipelines.Pipe();
        await pipe.Writer.WriteAsync(new byte[20 * 1024]);

        var (body, outcome) = await PooledRequestBody.ReadAsync(pipe.Reader.AsStream(), FourMiB, FourMiB, budget, TimeSpan.FromMilliseconds(300), CancellationToken.None);

        Assert.Equal(PooledRequestBody.Outcome.TimedOut, outcome);
        Assert.Null(body);
        Assert.Equal(0, budget.Held);
    }
}
