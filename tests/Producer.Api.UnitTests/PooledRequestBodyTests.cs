using System.Buffers;
using EventPipeline.Producer.Ingest;
using EventPipeline.Testing;
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
    public async Task A_body_without_Content_Length_never_takes_the_budget_past_its_limit_when_it_is_made_contiguous()
    {
        // 2 MiB + 1 byte sent chunked: the chain holds 2 MiB + 64 KiB, the contiguous copy the pool's 4 MiB. With others
        // holding most of the budget, charging that round-up unchecked took the total ~1.9 MiB past the limit.
        const int length = 2 * 1024 * 1024 + 1;
        var budget = Budget(8L * 1024 * 1024);
        Assert.True(budget.TryReserve(5L * 1024 * 1024)); // other submissions' bodies

        var (body, outcome) = await PooledRequestBody.ReadAsync(new MemoryStream(new byte[length]), null, FourMiB, budget, TimeSpan.FromSeconds(30), CancellationToken.None);
        using (body)
        {
            Assert.True(budget.Held <= budget.Limit,
                $"a chunked body of {length} bytes read as {outcome} left the budget holding {budget.Held} of its {budget.Limit} bytes");
        }

        Assert.Equal(PooledRequestBody.Outcome.OverBudget, outcome);
        Assert.Equal(5L * 1024 * 1024, budget.Held);
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

    // Arrays of 85,000 bytes and more go to the large-object heap, collected only with generation 2; the shared pool
    // keeps every size it was given back, so each size a body passes through stays in the API's memory.
    private const int LargeObjectBytes = 85_000;

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_largest_body_rents_one_large_object_heap_array_and_gives_every_buffer_back(bool withContentLength)
    {
        var pool = new CountingPool();
        var budget = Budget(32L * 1024 * 1024);
        var (body, outcome) = await PooledRequestBody.ReadAsync(new TrickleStream(new byte[FourMiB], 32 * 1024),
            withContentLength ? FourMiB : null, FourMiB, budget, TimeSpan.FromSeconds(30), pool, CancellationToken.None);

        Assert.Equal(PooledRequestBody.Outcome.Read, outcome);
        Assert.Equal(FourMiB, body!.Length);
        var large = pool.Rented.Where(n => n >= LargeObjectBytes).ToList();
        // The old reader doubled its buffer from 16 KiB: 128 KiB, 256 KiB, … 4 MiB, six large arrays for one body.
        Assert.True(large.Count <= 1, $"rented {large.Count} large arrays for one body: {string.Join(", ", large)}");
        Assert.Equal(FourMiB, budget.Held);
        body.Dispose();
        Assert.Equal(pool.Rented.Count, pool.Returned);
        Assert.Equal(0, budget.Held);
    }

    [Fact]
    public async Task A_body_being_read_holds_the_budget_for_the_bytes_that_have_arrived_rounded_to_one_buffer()
    {
        var budget = Budget(32L * 1024 * 1024);
        // 100 KiB of an announced 4 MiB arrive, then nothing: what is held is what was sent, not what was announced.
        var pipe = new System.IO.Pipelines.Pipe();
        var reading = PooledRequestBody.ReadAsync(pipe.Reader.AsStream(), FourMiB, FourMiB, budget, TimeSpan.FromSeconds(60), CancellationToken.None);
        await pipe.Writer.WriteAsync(new byte[100 * 1024]); // completes once the reader has taken most of it (the pipe pauses at 64 KiB)

        await Eventually.TrueAsync(() => Task.FromResult(budget.Held >= 100 * 1024), TimeSpan.FromSeconds(30), "the arrived bytes to be charged", TimeSpan.FromMilliseconds(10));
        Assert.InRange(budget.Held, 100 * 1024, 100 * 1024 + 128 * 1024);

        // All but the last byte of the largest body: held in exactly its size, so eight such fill the default budget
        // (InFlightIngestBudgetTests); a chain whose buffers the pool rounded past it held 16 KiB more each.
        await pipe.Writer.WriteAsync(new byte[FourMiB - 1 - 100 * 1024]);
        await Eventually.TrueAsync(() => Task.FromResult(budget.Held >= FourMiB), TimeSpan.FromSeconds(30), "the whole body to be charged", TimeSpan.FromMilliseconds(10));
        Assert.Equal(FourMiB, budget.Held);

        await pipe.Writer.CompleteAsync();
        var (body, outcome) = await reading;
        Assert.Equal(PooledRequestBody.Outcome.Read, outcome); // ended short: Kestrel would fail it; the reader keeps what came
        body!.Dispose();
        Assert.Equal(0, budget.Held);
    }

    /// <summary>The shared pool, recording every rent.</summary>
    private sealed class CountingPool : ArrayPool<byte>
    {
        public List<int> Rented { get; } = [];

        public int Returned { get; private set; }

        public override byte[] Rent(int minimumLength)
        {
            var array = Shared.Rent(minimumLength);
            Rented.Add(array.Length);
            return array;
        }

        public override void Return(byte[] array, bool clearArray = false)
        {
            Returned++;
            Shared.Return(array, clearArray);
        }
    }

    /// <summary>Gives at most <c>chunk</c> bytes per read, as a socket does.</summary>
    private sealed class TrickleStream(byte[] data, int chunk) : MemoryStream(data)
    {
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            base.ReadAsync(buffer[..Math.Min(buffer.Length, chunk)], cancellationToken);
    }
}
