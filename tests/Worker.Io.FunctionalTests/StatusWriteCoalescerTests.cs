using System.Diagnostics;
using EventPipeline.Contracts;
using EventPipeline.Shared;
using EventPipeline.Testing;
using EventPipeline.Worker.Io.Delivery;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using StackExchange.Redis;

namespace EventPipeline.Worker.Io.FunctionalTests;

/// <summary>
/// The coalescer's failure behaviour against its own real redis-server (paused with SIGSTOP where Redis must stall):
/// a queued write is answered within about one Redis timeout however many writes are queued, and every caller gets an
/// error of its own that the consumer's status-write handling covers.
/// </summary>
public sealed class StatusWriteCoalescerTests(ITestOutputHelper output) : IAsyncLifetime
{
    // Short, so a stall costs the test about a second; the default (5 s) scales every figure below by 5.
    private const int RedisTimeoutMs = 1000;
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);
    private RedisServer _server = null!;

    public async Task InitializeAsync() => _server = await RedisServer.StartAsync();

    public async Task DisposeAsync() => await _server.DisposeAsync();

    [Fact]
    public async Task A_queued_write_is_answered_within_about_one_redis_timeout_while_redis_is_stalled()
    {
        await using var redis = await ConnectAsync();
        var coalescer = new StatusWriteCoalescer(redis, Statuses(redis));
        // Ten calls' worth: one call in flight at a time used to answer the last write only after ten timeouts.
        const int writes = 10 * StatusWriteCoalescer.MaxBatch;
        var answered = new TimeSpan[writes];
        var errors = new Exception?[writes];
        TimeSpan disposed;
        var watch = Stopwatch.StartNew();
        await using (ProcessPause.Of(_server.Pid))
        {
            var calls = Enumerable.Range(0, writes).Select(async i =>
            {
                try
                {
                    await coalescer.TryStartAsync($"stalled-{i}", 1, "copy");
                }
                catch (Exception ex)
                {
                    errors[i] = ex;
                }

                answered[i] = watch.Elapsed;
            }).ToList();
            await coalescer.DisposeAsync().AsTask().WaitAsync(Deadline);
            disposed = watch.Elapsed;
            await Task.WhenAll(calls).WaitAsync(Deadline);
        }

        var slowest = answered.Max();
        output.WriteLine($"{writes} writes queued while Redis was stalled: slowest answered after {slowest.TotalSeconds:F2} s, DisposeAsync returned after {disposed.TotalSeconds:F2} s (Redis timeout {RedisTimeoutMs} ms)");
        Assert.True(slowest < TimeSpan.FromMilliseconds(4 * RedisTimeoutMs),
            $"the slowest of {writes} writes queued while Redis was stalled was answered after {slowest.TotalSeconds:F1} s (Redis timeout {RedisTimeoutMs} ms)");
        Assert.True(disposed < TimeSpan.FromMilliseconds(3 * RedisTimeoutMs),
            $"DisposeAsync returned after {disposed.TotalSeconds:F1} s while Redis was stalled (Redis timeout {RedisTimeoutMs} ms)");
        Assert.All(errors, e => Assert.True(e is TimeoutException or RedisException, $"a stalled write failed with {e?.GetType().Name ?? "no error"}"));
    }

    [Fact]
    public async Task A_success_recorded_after_dispose_fails_as_a_redis_failure_and_is_retried_not_thrown()
    {
        await using var redis = await ConnectAsync();
        var coalescer = new StatusWriteCoalescer(redis, Statuses(redis));
        await coalescer.DisposeAsync();

        var (ended, attempts) = await WriteStoppedAtSecondAttemptAsync(() => coalescer.MarkSucceededAsync("after-dispose", 1, ""), "after-dispose");

        // Retried like a Redis outage until the bus stops (the cancellation), never thrown to MassTransit, which would
        // run the event, downstream call included, again.
        Assert.IsAssignableFrom<OperationCanceledException>(ended);
        Assert.Equal(2, attempts);
    }

    [Fact]
    public async Task A_status_write_redis_refuses_for_good_is_given_up_while_a_failover_reply_is_retried()
    {
        await using var redis = await ConnectAsync();
        await using var coalescer = new StatusWriteCoalescer(redis, Statuses(redis));
        // A defect no retry cures: the event's status key holds a string. Retried "until written", the message held its
        // delivery slot for good; it must be let go (logged as an error) instead.
        await redis.GetDatabase().StringSetAsync(EventStatusStore.Key("wrong-type"), "not a hash");
        var attempts = 0;
        using (var giveUp = new CancellationTokenSource(TimeSpan.FromSeconds(20)))
        {
            var write = FinalStatusWrite.UntilWrittenAsync(() =>
            {
                attempts++;
                return coalescer.MarkSucceededAsync("wrong-type", 1, "");
            }, "wrong-type", EventStates.Succeeded, NullLogger.Instance, giveUp.Token);
            var ended = await Record.ExceptionAsync(() => write);
            Assert.True(ended is null, $"a status write Redis refuses with WRONGTYPE was still retried after {attempts} attempts in 20 s ({ended?.GetType().Name})");
        }

        Assert.Equal(1, attempts);

        // An outage's reply (the server turned into a replica: READONLY) is retried: here until the test stops it.
        var lastError = "";
        await redis.GetServer(redis.GetEndPoints()[0]).ExecuteAsync("REPLICAOF", "127.0.0.1", "1");
        Exception? retried;
        int readOnlyAttempts;
        try
        {
            (retried, readOnlyAttempts) = await WriteStoppedAtSecondAttemptAsync(() =>
                coalescer.MarkSucceededAsync("on-a-replica", 1, "").ContinueWith(t =>
                {
                    lastError = t.Exception?.InnerException?.Message ?? "";
                    return t;
                }).Unwrap(), "on-a-replica");
        }
        finally
        {
            await redis.GetServer(redis.GetEndPoints()[0]).ExecuteAsync("REPLICAOF", "NO", "ONE");
        }

        Assert.IsAssignableFrom<OperationCanceledException>(retried);
        Assert.Equal(2, readOnlyAttempts);
        output.WriteLine($"the replica's refusal: {lastError}");
        Assert.StartsWith("READONLY", lastError);
    }

    [Fact]
    public async Task A_status_write_through_a_connection_disposed_under_the_coalescer_is_retried_not_given_up()
    {
        // Shutdown outlasting the bus stop: the client throws ObjectDisposedException. The status store did not take
        // the write, and Redis never refused it: giving up would acknowledge the message with its status left behind.
        var redis = await ConnectAsync();
        var statuses = Statuses(redis);
        await redis.DisposeAsync();
        await using var coalescer = new StatusWriteCoalescer(redis, statuses);

        var (ended, attempts) = await WriteStoppedAtSecondAttemptAsync(() => coalescer.MarkSucceededAsync("disposed-under", 1, ""), "disposed-under");
        Assert.True(ended is OperationCanceledException,
            $"a status write through a disposed connection ended after {attempts} attempt(s) with {ended?.GetType().Name ?? "no exception (given up)"}");
        Assert.Equal(2, attempts);
    }

    [Fact]
    public async Task Each_caller_of_a_failed_call_gets_its_own_exception_wrapping_the_shared_cause()
    {
        // A client-side failure of every call: the multiplexer is gone.
        var redis = await ConnectAsync();
        var statuses = Statuses(redis);
        await redis.DisposeAsync();
        await using var coalescer = new StatusWriteCoalescer(redis, statuses);

        const int writes = 200;
        var calls = Enumerable.Range(0, writes).Select(i => coalescer.TryStartAsync($"gone-{i}", 1, "copy")).ToList();
        var errors = new List<Exception>();
        foreach (var call in calls)
        {
            errors.Add(await Assert.ThrowsAnyAsync<Exception>(() => call.WaitAsync(Deadline)));
        }

        Assert.Equal(writes, errors.Distinct(ReferenceEqualityComparer.Instance).Count());
        Assert.All(errors, e => Assert.True(e is RedisException or TimeoutException, $"a caller got {e.GetType().Name}: {e.Message}"));
        Assert.All(errors, e => Assert.NotNull(e.InnerException));
    }

    [Fact]
    public async Task The_service_provider_disposes_the_coalescer_synchronously_too()
    {
        await using var redis = await ConnectAsync();
        var services = new ServiceCollection();
        services.AddSingleton<IConnectionMultiplexer>(redis);
        services.AddOptions<StatusOptions>();
        services.AddSingleton<EventStatusStore>();
        services.AddSingleton<StatusWriteCoalescer>();
        var provider = services.BuildServiceProvider();
        var coalescer = provider.GetRequiredService<StatusWriteCoalescer>();
        Assert.Equal(StartDecision.Start, await coalescer.TryStartAsync("sync-dispose", 1, "copy"));

        var error = Record.Exception(provider.Dispose);

        Assert.Null(error);
        await Assert.ThrowsAnyAsync<RedisException>(() => coalescer.MarkSucceededAsync("sync-dispose", 1, "").WaitAsync(Deadline));
    }

    private async Task<ConnectionMultiplexer> ConnectAsync()
    {
        var options = ConfigurationOptions.Parse(_server.ConnectionString);
        options.AsyncTimeout = RedisTimeoutMs;
        options.SyncTimeout = RedisTimeoutMs;
        return await ConnectionMultiplexer.ConnectAsync(options);
    }

    /// <summary>
    /// A success's final status write as the consumer makes it, stopped at its second attempt as a stopping bus would:
    /// what it ended with (an OperationCanceledException when it kept retrying; null when it gave up) and its attempts.
    /// </summary>
    private static async Task<(Exception? Ended, int Attempts)> WriteStoppedAtSecondAttemptAsync(Func<Task> write, string eventId)
    {
        using var stop = new CancellationTokenSource();
        var attempts = 0;
        var run = FinalStatusWrite.UntilWrittenAsync(() =>
        {
            if (++attempts == 2)
            {
                stop.Cancel();
            }

            return write();
        }, eventId, EventStates.Succeeded, NullLogger.Instance, stop.Token);
        var ended = await Record.ExceptionAsync(() => run.WaitAsync(Deadline));
        return (ended, attempts);
    }

    private static EventStatusStore Statuses(IConnectionMultiplexer redis) =>
        new(redis, Microsoft.Extensions.Options.Options.Create(new StatusOptions()));
}
