"""Baseline (a) and (c): redis-py Streams with a consumer group, XADD by a producer, XREADGROUP + work + XACK in N
worker processes. The work is PBKDF2 or nothing (a), or a webhook POSTed with aiohttp (c).

What it does not do (the afternoon version): no per-event status, no result stored, no retry or reclaim of entries a
dead consumer left pending (XAUTOCLAIM), no dead-lettering, no trimming; an event whose POST fails stays pending.
"""
import argparse
import asyncio
import json
import time
import uuid

import redis

import common

STREAM, GROUP = "baseline-events", "baseline-workers"


def cpu_worker(no, ctl, rec, url, read_count):
    r = redis.Redis.from_url(url)
    r.ping()
    ctl.mark_ready()
    ctl.go.wait()
    consumer = f"worker-{no}"
    while not ctl.stop.is_set():
        for _, entries in r.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=read_count, block=100) or []:
            for entry_id, fields in entries:
                event = json.loads(fields[b"body"])
                common.do_work(event)
                r.xack(STREAM, GROUP, entry_id)  # after the work: a crash before this leaves the entry pending
                rec.completed(event)


def io_worker(no, ctl, rec, url, sink_url, concurrency):
    asyncio.run(_io_worker(no, ctl, rec, url, sink_url, concurrency))


async def _io_worker(no, ctl, rec, url, sink_url, concurrency):
    import aiohttp
    import redis.asyncio as aredis

    r = aredis.Redis.from_url(url)
    await r.ping()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                    timeout=aiohttp.ClientTimeout(total=30))
    consumer = f"worker-{no}"
    inflight = set()

    async def deliver(entry_id, body):
        event = json.loads(body)
        try:
            async with session.post(sink_url, data=body, headers={
                    "Content-Type": "application/json", "Idempotency-Key": event["id"]}) as response:
                await response.read()
                if response.status >= 300:
                    return  # left pending: this baseline has no retry
        except aiohttp.ClientError:
            return
        await r.xack(STREAM, GROUP, entry_id)
        rec.completed(event)

    ctl.mark_ready()
    await asyncio.get_running_loop().run_in_executor(None, ctl.go.wait)
    while not ctl.stop.is_set():
        free = concurrency - len(inflight)
        if free <= 0:
            await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            continue
        for _, entries in await r.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=min(free, 100), block=100) or []:
            for entry_id, fields in entries:
                task = asyncio.create_task(deliver(entry_id, fields[b"body"]))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
    if inflight:
        await asyncio.wait(inflight)
    await session.close()
    await r.aclose() if hasattr(r, "aclose") else await r.close()


def produce(r, run_tag, n, event_type, iterations, batch):
    """XADD in pipelined batches (no MULTI), as fast as one process can: the producer's side of a burst."""
    for start in range(0, n, batch):
        enqueued_at = time.time()
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(start + batch, n)):
            pipe.xadd(STREAM, {"body": common.make_event(run_tag, i, event_type, iterations, enqueued_at)})
        pipe.execute()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--redis", required=True, help="redis://:password@127.0.0.1:port/0")
    p.add_argument("--workload", choices=["cpu", "noop", "io"], required=True)
    p.add_argument("--mode", choices=["prefill", "burst"], default="prefill")
    p.add_argument("-n", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10_000)
    p.add_argument("--read-count", type=int, default=10, help="cpu/noop: entries per XREADGROUP")
    p.add_argument("--sink", help="io: webhook URL")
    p.add_argument("--concurrency", type=int, default=256, help="io: webhooks in flight per worker process")
    p.add_argument("--batch", type=int, default=100, help="producer: XADDs per pipeline")
    p.add_argument("--out")
    a = p.parse_args()

    r = redis.Redis.from_url(a.redis)
    r.delete(STREAM)
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    event_type = {"cpu": "hash.pbkdf2", "noop": "noop.cpu", "io": "webhook.post"}[a.workload]
    if a.workload == "io":
        workers = common.WorkerSet(io_worker, a.workers, (a.redis, a.sink, a.concurrency))
    else:
        workers = common.WorkerSet(cpu_worker, a.workers, (a.redis, a.read_count))
    run_tag = uuid.uuid4().hex[:8]
    workers.start()
    # CPU from the first send to the last completion in both modes: producing, the broker, the work (and the sink).
    cpu = common.CpuMeter(["redis", "sink"] if a.workload == "io" else ["redis"], workers.pids)
    if a.mode == "prefill":
        produce(r, run_tag, a.n, event_type, a.iterations, a.batch)
        started = workers.go()
    else:
        workers.go()
        started = time.time()
        produce(r, run_tag, a.n, event_type, a.iterations, a.batch)
    workers.wait_done(a.n, timeout=600)
    cpu_us = cpu.per_event_us(a.n)
    records = workers.stop()
    pending = r.xpending(STREAM, GROUP)["pending"]
    name = {"cpu": "redis-py Streams, PBKDF2", "noop": "redis-py Streams, noop",
            "io": "redis-py Streams + aiohttp, 50 ms webhook"}[a.workload]
    common.emit(common.figures(name, a.mode, a.n, records, started, {
        "workload": a.workload, "workers": a.workers, "pending_after": pending, "cpu_us_per_event": cpu_us}), a.out)
    r.delete(STREAM)


if __name__ == "__main__":
    main()
