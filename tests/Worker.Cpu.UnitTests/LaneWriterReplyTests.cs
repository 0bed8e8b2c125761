using System.Reflection;
using EventPipeline.Shared;
using EventPipeline.Worker.Cpu.Lane;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.UnitTests;

/// <summary>
/// A reply the writer cannot read fails the callers of that batch (the entries stay pending) and never stops the
/// writer: later writes are still written (Worker.Cpu/Lane/LaneWriter.cs).
/// </summary>
public sealed class LaneWriterReplyTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task A_malformed_reply_fails_its_batch_and_later_writes_are_still_written()
    {
        var replies = new Queue<RedisResult>([
            RedisResult.Create(Array.Empty<RedisResult>()), // malformed: none of the five arrays
            Reply(startDecision: (int)EntryOwnership.Start.Started),
        ]);
        var writer = Writer(FakeRedis.Create(() => replies.Dequeue()));
        var running = Task.Run(() => writer.RunAsync(() => false));

        var first = writer.StartAsync(Entry("first"));
        var failure = await Record.ExceptionAsync(() => first.WaitAsync(Patience));
        Assert.True(failure is RedisException, $"the caller of a batch with a malformed reply got {failure?.GetType().Name ?? "no exception"}, not a RedisException its handler reports");

        var second = await writer.StartAsync(Entry("second")).WaitAsync(Patience);
        Assert.Equal(EntryOwnership.Start.Started, second);

        writer.Complete();
        await running.WaitAsync(Patience);
    }

    private static RedisResult Reply(int startDecision) => RedisResult.Create([
        RedisResult.Create(Array.Empty<RedisResult>()),
        RedisResult.Create(Array.Empty<RedisResult>()),
        RedisResult.Create(Array.Empty<RedisResult>()),
        RedisResult.Create([RedisResult.Create((RedisValue)startDecision)]),
        RedisResult.Create([RedisResult.Create((RedisValue)"")]),
    ]);

    private static LaneWriter Writer(IConnectionMultiplexer redis)
    {
        var options = Options.Create(new CpuLaneOptions { WriteLinger = TimeSpan.Zero });
        return new LaneWriter(redis, new EventStatusStore(redis, Options.Create(new StatusOptions())), new LaneBuffer(options), options,
            NullLogger<LaneWriter>.Instance);
    }

    private static LaneEntry Entry(string id) => new($"1-{id.Length}", id, "noop.cpu", "{}", DateTimeOffset.UtcNow, 1, [], "[]");

    /// <summary>A multiplexer whose database answers every script with the next prepared reply; nothing else is used.</summary>
    public class FakeRedis : DispatchProxy
    {
        private Func<RedisResult>? _reply;

        public static IConnectionMultiplexer Create(Func<RedisResult> reply)
        {
            var db = DispatchProxy.Create<IDatabase, FakeRedis>();
            ((FakeRedis)(object)db)._reply = reply;
            var multiplexer = DispatchProxy.Create<IConnectionMultiplexer, FakeRedis>();
            ((FakeRedis)(object)multiplexer)._reply = () => throw new InvalidOperationException("not a database");
            ((FakeRedis)(object)multiplexer)._database = db;
            return multiplexer;
        }

        private IDatabase? _database;

        protected override object? Invoke(MethodInfo? method, object?[]? args) => method?.Name switch
        {
            nameof(IConnectionMultiplexer.GetDatabase) => _database,
            nameof(IDatabase.ScriptEvaluateAsync) => Task.FromResult(_reply!()),
            _ => throw new NotSupportedException(method?.Name),
        };
    }
}
