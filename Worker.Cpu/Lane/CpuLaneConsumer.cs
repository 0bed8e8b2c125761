using System.Diagnostics;
using EventPipeline.Contracts;
using EventPipeline.ServiceDefaults;
using EventPipeline.Shared;
using EventPipeline.Worker.Cpu.Forward;
using EventPipeline.Worker.Cpu.Work;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace EventPipeline.Worker.Cpu.Lane;

/// <summary>
/// The CPU lane's consumer: one reading loop feeding <see cref="LaneBuffer"/>, handler tasks running the work (at most
/// <c>Handlers</c> computing at once, at most the started bound taken up: <c>MaxStarted</c>, or by default adapted to
/// the measured compute time of recent jobs, <see cref="StartedBound"/>), and the drain on shutdown — stop reading,
/// finish everything buffered, acknowledge, exit. An entry is acknowledged only after its handler finished (success,
/// scheduled retry or dead letter); starts and successes are written in batches (<see cref="LaneWriter"/>).
/// A run is charged when a handler takes an entry up and taken back if the drain times out before the entry got a core
/// (<see cref="ComputeSlots"/>): only the entries computing at the deadline count as runs that died with this consumer. An entry another consumer has claimed (this one was paused past the claim timeout) is neither
/// started nor failed here.
/// </summary>
public sealed class CpuLaneConsumer(
    LaneBuffer buffer,
    StreamEntryReader reader,
    CpuWork work,
    EntryAcknowledger acknowledger,
    EntryOwnership ownership,
    ComputeSlots cores,
    LaneWriter writer,
    RetryScheduler retries,
    DeadLetterStream deadLetters,
    INextStageForwarder forwarder,
    SuspectIsolationGate isolation,
    StartedBound bound,
    IConnectionMultiplexer redis,
    PipelineMetrics metrics,
    IOptions<CpuLaneOptions> options,
    ILogger<CpuLaneConsumer> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        // Twice the highest bound: while half of them wait on their success being written, the other half start new
        // entries. Only twice the bound in force take entries (StartedBound.ActiveHandlers); the others wait for a raise.
        var handlerCount = bound.Ceiling * 2;
        if (bound.IsAdaptive)
        {
            logger.LogInformation("CPU lane consumer {Consumer} starting {Tasks} handlers, {Base} to {Ceiling} taken up as the jobs' compute time allows ({Budget} for what a crash leaves) and {Parallel} running CPU work at once",
                buffer.ConsumerName, handlerCount, bound.Base, bound.Ceiling, options.Value.StartedWorkBudget, options.Value.EffectiveHandlers);
        }
        else
        {
            logger.LogInformation("CPU lane consumer {Consumer} starting {Tasks} handlers, at most {Started} taken up and {Parallel} running CPU work at once",
                buffer.ConsumerName, handlerCount, bound.Base, options.Value.EffectiveHandlers);
        }

        var writing = Task.Run(() => writer.RunAsync(() => cores.WorkWaitingForCore), CancellationToken.None);
        var handlers = Enumerable.Range(0, handlerCount)
            .Select(index => Task.Run(() => RunHandlerAsync(index), CancellationToken.None))
            .ToArray();
        // Runs until the drain is over, not until SIGTERM: entries still being drained must not look abandoned.
        using var heartbeatStop = new CancellationTokenSource();
        var heartbeat = KeepHeldEntriesFreshAsync(heartbeatStop.Token);

        await ReadUntilStoppedAsync(stoppingToken);
        // Beside the drain: nothing reads any more.
        var wakeRemoved = reader.RemoveWakeStreamAsync(redis);

        buffer.Close();
        logger.LogInformation("CPU lane consumer {Consumer} draining {Buffered} buffered entries", buffer.ConsumerName, buffer.Reader.Count);
        var drained = Task.WhenAll(handlers);
        if (await Task.WhenAny(drained, Task.Delay(options.Value.DrainTimeout, CancellationToken.None)) != drained)
        {
            logger.LogWarning("Drain timeout {Timeout} passed; unfinished entries stay pending for another consumer", options.Value.DrainTimeout);
            await cores.TakeBackUnstartedAsync();
        }
        else
        {
            logger.LogInformation("CPU lane consumer {Consumer} drained", buffer.ConsumerName);
        }

        // After a drain timeout handlers may still run, but ComputeSlots charges nothing any more: no start is queued.
        writer.Complete();
        await writing;
        await heartbeatStop.CancelAsync();
        await heartbeat;
        await wakeRemoved;
    }

    private async Task ReadUntilStoppedAsync(CancellationToken stoppingToken)
    {
        // The blocking read is not cancellable: on stop, an entry on the reader's wake-up stream ends it at once.
        await using var wake = stoppingToken.Register(() => reader.Wake(redis));
        var backoff = TimeSpan.Zero;
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                if (backoff > TimeSpan.Zero)
                {
                    await Task.Delay(backoff, stoppingToken);
                }

                await buffer.WaitForRoomAsync(stoppingToken);

                await StreamEntryReader.EnsureGroupOnceAsync(redis.GetDatabase());
                // Not cancelled by shutdown: the read returns within BlockTimeout, or at once when the stop wakes it
                // (StreamEntryReader.Wake), and what it returns is ours to run.
                var entries = await reader.ReadAsync(buffer.ConsumerName, Math.Max(1, buffer.FreeSlots), CancellationToken.None, stoppingToken);
                foreach (var entry in entries)
                {
                    await buffer.AddAsync(entry);
                }

                backoff = TimeSpan.Zero;
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (RedisServerException ex) when ((ex.Message.StartsWith("NOGROUP", StringComparison.Ordinal) && reader.IsAboutWakeStream(ex))
                || ex.Message.StartsWith("UNBLOCKED the stream key no longer exists", StringComparison.Ordinal))
            {
                // The reader's wake-up stream was deleted or expired (a blocked read hears "UNBLOCKED", the next one
                // NOGROUP): it is made again before the next read. If it was the lane's stream that went, the next read
                // says so (NOGROUP naming it, below).
                logger.LogInformation("A stream the CPU lane was reading went missing ({Error}); checking the wake-up stream {WakeKey} before the next read",
                    ex.Message, reader.WakeKey.ToString());
                reader.ForgetWakeStream();
                backoff = TimeSpan.FromMilliseconds(100);
            }
            catch (RedisServerException ex) when (ex.Message.StartsWith("NOGROUP", StringComparison.Ordinal))
            {
                logger.LogWarning("Consumer group {Group} is missing (Redis lost its data?); recreating it", CpuLaneStreams.Group);
                StreamEntryReader.ForgetGroup();
                reader.ForgetWakeStream();
                backoff = TimeSpan.FromMilliseconds(100);
            }
            catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
            {
                if (ex is RedisServerException { Message: var reply } && reply.StartsWith("WRONGTYPE", StringComparison.Ordinal))
                {
                    // Perhaps the wake-up stream's name now holds a key of another type: the next read checks it (and
                    // leaves it out if so). If the lane's own stream is the one, this keeps failing, with the backoff.
                    reader.ForgetWakeStream();
                }

                backoff = backoff == TimeSpan.Zero ? TimeSpan.FromMilliseconds(200) : TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, TimeSpan.FromSeconds(5).Ticks));
                logger.LogWarning(ex, "Reading the CPU lane failed; retrying in {Backoff}", backoff);
            }
        }
    }

    private async Task RunHandlerAsync(int index)
    {
        while (true)
        {
            // Read before the bound: a raise in between completes it.
            var raise = bound.NextRaise;
            if (index >= bound.ActiveHandlers)
            {
                // Not needed at the bound in force: wait for a raise, or for the drain to have emptied the buffer.
                if (buffer.Reader.Completion.IsCompleted)
                {
                    return;
                }

                await Task.WhenAny(raise, buffer.Reader.Completion);
                continue;
            }

            if (!await buffer.Reader.WaitToReadAsync())
            {
                return;
            }

            while (index < bound.ActiveHandlers && buffer.TryTake(out var entry))
            {
                try
                {
                    await HandleAsync(entry);
                }
                catch (Exception ex)
                {
                    // The outcome could not be written (Redis unreachable): the entry stays pending and is claimed again.
                    logger.LogError(ex, "Could not record the outcome of event {EventId} (entry {EntryId}); it stays pending", entry.Id, entry.EntryId);
                }
                finally
                {
                    buffer.Release(entry);
                }
            }
        }
    }

    private async Task HandleAsync(LaneEntry entry)
    {
        using var activity = StartProcessActivity(entry);
        var startedAt = 0L;
        string? result = null;
        Exception? failure = null;
        await using (await isolation.EnterAsync(entry))
        {
            if (entry.IsSuspect)
            {
                logger.LogWarning("Event {EventId} (entry {EntryId}) was running when its consumer died {Runs} time(s); running it alone",
                    entry.Id, entry.EntryId, entry.UnfinishedRuns);
            }

            // Charged as a run and marked processing now (one script), so that a crash during the work is seen by
            // whoever claims the entry; only if this consumer still owns the entry and its event may start (not
            // succeeded, cancelled or expired). A Redis error here is not the event's failure: it propagates, and the
            // entry stays pending.
            switch (await cores.ChargeAsync(entry))
            {
                case null:
                    return; // the drain timed out: nothing starts any more, the entry stays pending
                case EntryOwnership.Start.ClaimedByAnother:
                    logger.LogWarning("Event {EventId} (entry {EntryId}) was claimed by another consumer while it waited here; leaving it to that consumer",
                        entry.Id, entry.EntryId);
                    return;
                case EntryOwnership.Start.AlreadySucceeded:
                    logger.LogInformation("Event {EventId} already succeeded; acknowledging the redelivery without running it", entry.Id);
                    await acknowledger.AcknowledgeAsync(entry);
                    return;
                case EntryOwnership.Start.Cancelled:
                    await RefuseStartAsync(entry, StartDecision.Cancelled);
                    return;
                case EntryOwnership.Start.Expired:
                    await RefuseStartAsync(entry, StartDecision.Expired);
                    return;
            }

            if (!await cores.WaitForCoreAsync(entry))
            {
                return; // the drain timed out first: the run is taken back, the entry stays pending
            }

            if (!buffer.Holds(entry))
            {
                // The heartbeat found it claimed by another consumer while this one was paused: the run is not ours.
                cores.Release();
                await cores.TakeBackAsync(entry);
                logger.LogWarning("Event {EventId} (entry {EntryId}) was claimed by another consumer while it waited for a core; leaving it to that consumer",
                    entry.Id, entry.EntryId);
                return;
            }

            NextStage? next = null;
            try
            {
                startedAt = Stopwatch.GetTimestamp();
                next = NextStage.Parse(entry.Payload);
                result = work.Run(entry.Id, entry.Type, entry.Payload);
            }
            catch (Exception ex)
            {
                failure = ex;
            }
            finally
            {
                cores.Release();
                bound.Observe(Stopwatch.GetElapsedTime(startedAt));
            }

            if (failure is null && next is not null)
            {
                try
                {
                    // Before the acknowledgement: a crash after this re-runs the event and forwards the same derived id.
                    await forwarder.ForwardAsync(entry, next, result!);
                }
                catch (Exception ex)
                {
                    failure = ex;
                }
            }

            if (failure is not null)
            {
                activity?.SetStatus(ActivityStatusCode.Error, failure.Message);
                await FailAsync(entry, failure, Stopwatch.GetElapsedTime(startedAt));
                return;
            }
        }

        // The work is done: another entry may start while this success is written (with others, in one transaction).
        var handled = Stopwatch.GetElapsedTime(startedAt);
        await writer.SucceededAsync(entry, result!);
        metrics.Processed(Lanes.Cpu, entry.Type, Outcomes.Succeeded, handled);
        metrics.Finished(Lanes.Cpu, Outcomes.Succeeded, entry.AcceptedAt);
    }

    private async Task RefuseStartAsync(LaneEntry entry, StartDecision decision)
    {
        logger.LogInformation("Event {EventId} not started ({Decision}); acknowledging it without running it", entry.Id, decision);
        await acknowledger.AcknowledgeAsync(entry);
        if (decision is StartDecision.Cancelled or StartDecision.Expired)
        {
            SchedulingTelemetry.NotRun(Lanes.Cpu, entry.Type, decision == StartDecision.Expired ? EventStates.Expired : EventStates.Cancelled);
        }
    }

    private async Task FailAsync(LaneEntry entry, Exception error, TimeSpan elapsed)
    {
        // A retry or dead letter written for an entry another consumer claimed would fork the event into two.
        if (!await ownership.IsHeldAsync(entry))
        {
            logger.LogWarning(error, "Event {EventId} (entry {EntryId}) failed here, but another consumer claimed it meanwhile; leaving its outcome to that consumer",
                entry.Id, entry.EntryId);
            return;
        }

        if (error is PermanentEventException || entry.Attempt >= options.Value.MaxAttempts)
        {
            logger.LogWarning(error, "Event {EventId} failed attempt {Attempt} of {MaxAttempts}; dead-lettering it", entry.Id, entry.Attempt, options.Value.MaxAttempts);
            if (await deadLetters.DeadLetterAsync(entry, error))
            {
                metrics.Processed(Lanes.Cpu, entry.Type, Outcomes.Dead, elapsed);
                metrics.Finished(Lanes.Cpu, Outcomes.Dead, entry.AcceptedAt);
            }
            else
            {
                logger.LogInformation("Event {EventId} had already succeeded (a duplicate run failed); acknowledged without a dead letter", entry.Id);
            }

            return;
        }

        logger.LogInformation("Event {EventId} failed attempt {Attempt} of {MaxAttempts} ({Error}); scheduling a retry",
            entry.Id, entry.Attempt, options.Value.MaxAttempts, error.Message);
        await retries.ScheduleAsync(entry, error);
        metrics.Processed(Lanes.Cpu, entry.Type, Outcomes.Retried, elapsed);
    }

    /// <summary>
    /// Resets the idle time of every entry this consumer still holds (XCLAIM JUSTID to itself, which does not count as
    /// a delivery), so other consumers only claim entries whose consumer has really gone. Entries another consumer
    /// claimed meanwhile (this process was paused past the claim timeout) are not taken back (<see cref="EntryOwnership"/>).
    /// </summary>
    private async Task KeepHeldEntriesFreshAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(options.Value.ClaimTimeout / 3);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                var held = buffer.HeldEntryIds;
                if (held.Count == 0)
                {
                    continue;
                }

                try
                {
                    var lost = await ownership.RefreshHeldAsync(held);
                    if (lost.Length > 0)
                    {
                        logger.LogWarning("{Count} entries held here were claimed by another consumer (this one was not heard from for longer than {ClaimTimeout}); leaving them to it: {EntryIds}",
                            lost.Length, options.Value.ClaimTimeout, string.Join(", ", lost));
                        foreach (var id in lost)
                        {
                            buffer.Release(id);
                        }
                    }
                }
                catch (Exception ex) when (RedisFailures.IsRedisFailure(ex))
                {
                    logger.LogWarning(ex, "Could not refresh {Count} held entries", held.Count);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private static Activity? StartProcessActivity(LaneEntry entry)
    {
        var parent = LaneTraceContext.Extract(entry.TraceContext);
        // Only HandleAsync's own flow sees it (an async method's changes to AsyncLocals do not reach its caller).
        OpenTelemetry.Baggage.Current = parent.Baggage;
        var activity = PipelineTelemetry.ActivitySource.StartActivity($"{CpuLaneStreams.Stream} process", ActivityKind.Consumer, parent.ActivityContext);
        activity?.SetTag("messaging.system", "redis");
        activity?.SetTag("messaging.destination.name", CpuLaneStreams.Stream.ToString());
        activity?.SetTag("messaging.operation.type", "process");
        activity?.SetTag("messaging.consumer.group.name", CpuLaneStreams.Group);
        activity?.SetTag("messaging.message.id", entry.EntryId.ToString());
        activity?.SetTag("eventpipeline.event.id", entry.Id);
        activity?.SetTag("eventpipeline.event.type", entry.Type);
        activity?.SetTag("eventpipeline.attempt", entry.Attempt);
        return activity;
    }
}
