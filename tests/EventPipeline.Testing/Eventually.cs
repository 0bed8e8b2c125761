using System.Diagnostics;

namespace EventPipeline.Testing;

/// <summary>Waits for a condition with a deadline instead of sleeping a fixed time.</summary>
public static class Eventually
{
    public static async Task<T> ReturnsAsync<T>(Func<Task<T>> probe, Func<T, bool> done, TimeSpan timeout, string what, TimeSpan? pollEvery = null)
    {
        var poll = pollEvery ?? TimeSpan.FromMilliseconds(100);
        var watch = Stopwatch.StartNew();
        T last = default!;
        Exception? lastError = null;
        while (watch.Elapsed < timeout)
        {
            try
            {
                last = await probe();
                if (done(last))
                {
                    return last;
                }

                lastError = null;
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                lastError = ex;
            }

            await Task.Delay(poll);
        }

        throw new TimeoutException($"Timed out after {timeout} waiting for {what}; last value: {last}", lastError);
    }

    public static Task TrueAsync(Func<Task<bool>> probe, TimeSpan timeout, string what, TimeSpan? pollEvery = null) =>
        ReturnsAsync(probe, ok => ok, timeout, what, pollEvery);
}
