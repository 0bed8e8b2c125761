using System.Buffers;

namespace EventPipeline.Producer.Ingest;

/// <summary>
/// A request body read into buffers rented from <see cref="ArrayPool{T}.Shared"/> and given back on dispose, so a batch
/// body (hundreds of kilobytes) does not allocate large-object-heap arrays per request: those are collected only with
/// generation 2 and made most of the API's peak memory under batch load. A body takes at most one large array from the
/// pool (the contiguous copy it is parsed from), whatever its size: the pool keeps every size it is given back.
/// Owns the memory half of "the API's memory for submissions is bounded": every buffer it rents is counted against the
/// <see cref="InFlightIngestBudget"/> before the bytes it is for are read, and given back on dispose.
/// </summary>
public sealed class PooledRequestBody : IDisposable
{
    private const int FirstBufferBytes = 16 * 1024;

    // Below the large-object heap's 85,000 bytes: while a body arrives it holds small arrays only. The chain is 16, 16,
    // 32, then 64 KiB each, so every buffer from the third on starts at a multiple of its size and a body of a whole
    // number of 64 KiB (the 4 MiB limit) is held in exactly its bytes: eight largest batches fill the default budget.
    private const int SegmentBytes = 64 * 1024;

    private readonly InFlightIngestBudget _budget;
    private readonly ArrayPool<byte> _pool;
    private readonly List<byte[]> _segments = [];
    private byte[] _buffer = [];
    private long _reserved;

    private PooledRequestBody(InFlightIngestBudget budget, ArrayPool<byte> pool) => (_budget, _pool) = (budget, pool);

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
    public static Task<(PooledRequestBody? Body, Outcome Outcome)> ReadAsync(
        Stream body, long? contentLength, int maxBytes, InFlightIngestBudget budget, TimeSpan timeout, CancellationToken cancellationToken) =>
        ReadAsync(body, contentLength, maxBytes, budget, timeout, ArrayPool<byte>.Shared, cancellationToken);

    /// <summary>The same with the pool the buffers come from (tests count what is rented).</summary>
    internal static async Task<(PooledRequestBody? Body, Outcome Outcome)> ReadAsync(
        Stream body, long? contentLength, int maxBytes, InFlightIngestBudget budget, TimeSpan timeout, ArrayPool<byte> pool, CancellationToken cancellationToken)
    {
        if (contentLength > maxBytes)
        {
            return (null, Outcome.TooLarge);
        }

        // With a Content-Length the body ends there: Kestrel ends it there and fails a shorter one, so there is nothing
        // past it to see. Without one the buffers stop at maxBytes, and one more byte read on the side tells a longer
        // body (a buffer of maxBytes + 1 would double the contiguous copy: the pool rents powers of two).
        var limit = contentLength ?? maxBytes;
        var read = new PooledRequestBody(budget, pool);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        try
        {
            // A body is read into a chain of small buffers (16 KiB up to 64 KiB each), each rented only once the one
            // before is full: a client that announces a large body and sends it slowly holds only what it has sent, so a
            // few slow clients cannot hold the budget for everyone. Doubling one buffer instead rented and kept in the
            // pool a large array of every size from 128 KiB to the body's.
            var segment = Array.Empty<byte>();
            var filled = 0;
            while (read.Length < limit)
            {
                if (filled == segment.Length)
                {
                    var size = (int)Math.Min(Math.Clamp(read.Length, FirstBufferBytes, SegmentBytes), limit - read.Length);
                    if (!read.TryRent(size, out segment))
                    {
                        read.Dispose();
                        return (null, Outcome.OverBudget);
                    }

                    filled = 0;
                }

                var room = (int)Math.Min(segment.Length - filled, limit - read.Length);
                var n = await body.ReadAsync(segment.AsMemory(filled, room), deadline.Token);
                if (n == 0)
                {
                    break;
                }

                filled += n;
                read.Length += n;
            }

            if (contentLength is null && read.Length == maxBytes && await body.ReadAsync(new byte[1], deadline.Token) > 0)
            {
                read.Dispose();
                return (null, Outcome.TooLarge);
            }

            if (!read.Join())
            {
                read.Dispose();
                return (null, Outcome.OverBudget);
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
    /// Rents the next buffer of the chain. The budget is charged its size before renting, then whatever the pool rounds
    /// up on top (it rents powers of two), so what is counted is what is held.
    /// </summary>
    private bool TryRent(int size, out byte[] segment)
    {
        if (!_budget.TryReserve(size, _reserved))
        {
            segment = [];
            return false;
        }

        segment = _pool.Rent(size);
        _budget.Add(segment.Length - size);
        _reserved += segment.Length;
        _segments.Add(segment);
        return true;
    }

    /// <summary>
    /// Makes the body one contiguous buffer (what the JSON parser and the payloads read), renting one of its length and
    /// giving the chain back. The budget is charged what changes (the copy's size against the chain's). The chain held
    /// at least the body's bytes, but the pool rounds the copy up to a power of two: a body without a Content-Length just
    /// past one (2 MiB + 1 byte: a 4 MiB copy) may hold more than its chain, and that is refused like any other buffer
    /// the budget cannot take (false: 429, nothing enqueued). Both are held during the copy: that moment is CPU-bound, a
    /// client cannot stretch it, and not counting it lets eight largest batches fill the default budget exactly.
    /// </summary>
    private bool Join()
    {
        if (_segments.Count == 1)
        {
            _buffer = _segments[0];
            _segments.Clear();
            return true;
        }

        if (_segments.Count == 0)
        {
            return true;
        }

        var joined = _pool.Rent(Length);
        if (joined.Length > _reserved && !_budget.TryReserve(joined.Length - _reserved, _reserved))
        {
            _pool.Return(joined);
            return false;
        }

        var at = 0;
        foreach (var segment in _segments)
        {
            var n = Math.Min(segment.Length, Length - at);
            segment.AsSpan(0, n).CopyTo(joined.AsSpan(at));
            at += n;
        }

        if (joined.Length < _reserved)
        {
            _budget.Release(_reserved - joined.Length);
        }

        _reserved = joined.Length;
        _buffer = joined;
        ReturnSegments();
        return true;
    }

    private void ReturnSegments()
    {
        foreach (var segment in _segments)
        {
            _pool.Return(segment);
        }

        _segments.Clear();
    }

    public void Dispose()
    {
        ReturnSegments();
        if (_buffer.Length > 0)
        {
            _pool.Return(_buffer);
            _buffer = [];
        }

        Length = 0;
        _budget.Release(_reserved);
        _reserved = 0;
    }
}
