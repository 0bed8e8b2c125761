using System.Buffers;

namespace EventPipeline.Producer.Ingest;

/// <summary>
/// A request body read into one buffer rented from <see cref="ArrayPool{T}.Shared"/> and given back on dispose, so a
/// batch body (hundreds of kilobytes) does not allocate a growing chain of large-object-heap arrays per request: those
/// are collected only with generation 2 and made most of the API's peak memory under batch load.
/// Owns the memory half of "the API's memory for submissions is bounded": every buffer it rents is counted against the
/// <see cref="InFlightIngestBudget"/> before the bytes it is for are read, and given back on dispose.
/// </summary>
public sealed class PooledRequestBody : IDisposable
{
    private const int FirstBufferBytes = 16 * 1024;
    private readonly InFlightIngestBudget _budget;
    private byte[] _buffer = [];
    private long _reserved;

    private PooledRequestBody(InFlightIngestBudget budget) => _budget = budget;

    public enum Outcome
    {
        Read,
        TooLarge,
        OverBudget,
        TimedOut,
    }

    public int Length { get; private set; }

    /// <summary>Valid until <see cref="Dispose"/>.</summary>
    public ReadOnlyMemory<byte> Memory => _buffer.AsMemory(0, Length);

    /// <summary>
    /// Reads the whole body. <see cref="Outcome.TooLarge"/> when it is longer than <paramref name="maxBytes"/>;
    /// <see cref="Outcome.OverBudget"/> when the next buffer it needs would take the budget past its limit (nothing
    /// of it is kept); <see cref="Outcome.TimedOut"/> when the body has not all arrived within <paramref name="timeout"/>
    /// (its buffers are given back: what a slow client holds, it holds for that long at most).
    /// </summary>
    public static async Task<(PooledRequestBody? Body, Outcome Outcome)> ReadAsync(
        Stream body, long? contentLength, int maxBytes, InFlightIngestBudget budget, TimeSpan timeout, CancellationToken cancellationToken)
    {
        if (contentLength > maxBytes)
        {
            return (null, Outcome.TooLarge);
        }

        // With a Content-Length the last buffer is exactly that size: Kestrel ends the body there and fails a shorter
        // one, so there is nothing past it to see. Without one the buffer stops at maxBytes, and one more byte read on
        // the side tells a longer body (renting maxBytes + 1 would double the last buffer: the pool rents powers of two).
        var limit = contentLength ?? maxBytes;
        var read = new PooledRequestBody(budget);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        try
        {
            // The buffer grows (doubling, from 16 KiB) only as bytes arrive: a client that announces a large body and
            // sends it slowly holds only what it has sent, so a few slow clients cannot hold the budget for everyone.
            while (read.Length < limit)
            {
                if (read.Length == read._buffer.Length && !read.TryGrow(Math.Min(Math.Max(FirstBufferBytes, read._buffer.Length * 2L), limit)))
                {
                    read.Dispose();
                    return (null, Outcome.OverBudget);
                }

                var room = (int)Math.Min(read._buffer.Length, limit) - read.Length;
                var n = await body.ReadAsync(read._buffer.AsMemory(read.Length, room), deadline.Token);
                if (n == 0)
                {
                    break;
                }

                read.Length += n;
            }

            if (contentLength is null && read.Length == maxBytes && await body.ReadAsync(new byte[1], deadline.Token) > 0)
            {
                read.Dispose();
                return (null, Outcome.TooLarge);
            }

            return (read, Outcome.Read);
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            read.Dispose();
            return (null, Outcome.TimedOut);
        }
        catch
        {
            read.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Rents a buffer of <paramref name="size"/> bytes in place of the current one. The budget is charged the growth
    /// (new size − old) before renting, then whatever the pool rounds up on top (it rents powers of two), so what is
    /// counted is what is held. The old buffer is held during the copy too: that moment is CPU-bound, a client cannot
    /// stretch it, and not counting it lets eight largest batches fill the default budget exactly.
    /// </summary>
    private bool TryGrow(long size)
    {
        if (!_budget.TryReserve(size - _buffer.Length, _reserved))
        {
            return false;
        }

        _reserved += size - _buffer.Length;
        var bigger = ArrayPool<byte>.Shared.Rent((int)size);
        _budget.Add(bigger.Length - size);
        _reserved += bigger.Length - size;
        _buffer.AsSpan(0, Length).CopyTo(bigger);
        if (_buffer.Length > 0)
        {
            ArrayPool<byte>.Shared.Return(_buffer);
        }

        _buffer = bigger;
        return true;
    }

    public void Dispose()
    {
        if (_buffer.Length > 0)
        {
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = [];
            Length = 0;
        }

        _budget.Release(_reserved);
        _reserved = 0;
    }
}
