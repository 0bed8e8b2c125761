using System.Buffers;

namespace EventPipeline.Producer.Ingest;

/// <summary>
/// A request body read into one buffer rented from <see cref="ArrayPool{T}.Shared"/> and given back on dispose, so a
/// batch body (hundreds of kilobytes) does not allocate a growing chain of large-object-heap arrays per request: those
/// are collected only with generation 2 and made most of the API's peak memory under batch load.
/// </summary>
public sealed class PooledRequestBody : IDisposable
{
    private const int FirstBufferBytes = 16 * 1024;
    private byte[] _buffer;

    private PooledRequestBody(byte[] buffer, int length) => (_buffer, Length) = (buffer, length);

    public int Length { get; private set; }

    /// <summary>Valid until <see cref="Dispose"/>.</summary>
    public ReadOnlyMemory<byte> Memory => _buffer.AsMemory(0, Length);

    /// <summary>Reads the whole body; null when it is longer than <paramref name="maxBytes"/> (at most maxBytes + 1 bytes are read).</summary>
    public static async Task<PooledRequestBody?> ReadAsync(Stream body, long? contentLength, int maxBytes, CancellationToken cancellationToken)
    {
        // Content-Length sizes the buffer exactly; +1 so that a body longer than announced is still seen to be too long.
        var size = contentLength is { } announced && announced <= maxBytes ? (int)announced + 1 : Math.Min(FirstBufferBytes, maxBytes + 1);
        var read = new PooledRequestBody(ArrayPool<byte>.Shared.Rent(size), 0);
        try
        {
            while (true)
            {
                // The pool may hand out more than asked for: never read past maxBytes + 1 all the same.
                if (read.Length == Math.Min(read._buffer.Length, maxBytes + 1L))
                {
                    if (read.Length > maxBytes)
                    {
                        read.Dispose();
                        return null;
                    }

                    read.Grow(Math.Min((long)read._buffer.Length * 2, maxBytes + 1L));
                }

                var room = (int)Math.Min(read._buffer.Length, maxBytes + 1L) - read.Length;
                var n = await body.ReadAsync(read._buffer.AsMemory(read.Length, room), cancellationToken);
                if (n == 0)
                {
                    break;
                }

                read.Length += n;
            }

            if (read.Length > maxBytes)
            {
                read.Dispose();
                return null;
            }

            return read;
        }
        catch
        {
            read.Dispose();
            throw;
        }
    }

    private void Grow(long size)
    {
        var bigger = ArrayPool<byte>.Shared.Rent((int)size);
        _buffer.AsSpan(0, Length).CopyTo(bigger);
        ArrayPool<byte>.Shared.Return(_buffer);
        _buffer = bigger;
    }

    public void Dispose()
    {
        if (_buffer.Length > 0)
        {
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = [];
            Length = 0;
        }
    }
}
