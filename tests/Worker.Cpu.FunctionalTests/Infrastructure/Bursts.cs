using System.Collections.Concurrent;

namespace EventPipeline.Worker.Cpu.FunctionalTests.Infrastructure;

/// <summary>Submits many events through <c>POST /events/batch</c> with a few requests in flight, like a busy client.</summary>
public static class Bursts
{
    public static object Pbkdf2(string id, int iterations) => new { id, type = "hash.pbkdf2", payload = new { data = DataOf(id), iterations } };

    public static string DataOf(string id) => "data of " + id;

    /// <summary>What Worker.Cpu must store as the result of <see cref="Pbkdf2"/>: computed here, independently.</summary>
    public static string ExpectedPbkdf2(string id, int iterations) => Convert.ToHexStringLower(System.Security.Cryptography.Rfc2898DeriveBytes.Pbkdf2(
        System.Text.Encoding.UTF8.GetBytes(DataOf(id)), System.Text.Encoding.UTF8.GetBytes(id), iterations,
        System.Security.Cryptography.HashAlgorithmName.SHA256, 32));

    /// <summary>Submits <paramref name="count"/> events; returns the ids the API answered 202 for (all, unless a broker was down).</summary>
    public static async Task<IReadOnlyList<string>> SubmitAsync(CpuLaneHarness lane, int count, Func<int, object> create,
        int batchSize = 500, int parallel = 4, CancellationToken stop = default)
    {
        var accepted = new ConcurrentBag<string>();
        var batches = Enumerable.Range(0, (count + batchSize - 1) / batchSize)
            .Select(b => Enumerable.Range(b * batchSize, Math.Min(batchSize, count - b * batchSize)).Select(create).ToArray());
        await Parallel.ForEachAsync(batches, new ParallelOptions { MaxDegreeOfParallelism = parallel, CancellationToken = stop }, async (batch, _) =>
        {
            // A loaded machine can make the broker confirm late (503); a client resubmits the same ids, which is safe.
            IReadOnlyList<string>? ids = null;
            for (var attempt = 0; ids is null && attempt < 5; attempt++)
            {
                ids = await lane.SubmitBatchAsync(batch);
            }

            foreach (var id in ids ?? throw new InvalidOperationException("the API did not accept a batch in 5 tries"))
            {
                accepted.Add(id);
            }
        });
        return [.. accepted];
    }
}
