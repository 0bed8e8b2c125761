"""Drives baseline (d): a Celery worker (prefork, --concurrency 2) started here, N PBKDF2 tasks sent with .delay()."""
import argparse
import os
import signal
import subprocess
import sys
import time
import uuid

import redis

import common


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--redis", required=True)
    p.add_argument("--mode", choices=["prefill", "burst"], default="prefill")
    p.add_argument("-n", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--out")
    a = p.parse_args()
    os.environ["BASELINE_REDIS"] = a.redis
    import celery_tasks  # noqa: E402 (reads BASELINE_REDIS)

    r = redis.Redis.from_url(a.redis)
    r.delete(celery_tasks.QUEUE, celery_tasks.DONE, celery_tasks.READY)
    run_tag = uuid.uuid4().hex[:8]

    def produce():
        for start in range(0, a.n, a.batch):
            enqueued_at = time.time()
            for i in range(start, min(start + a.batch, a.n)):
                celery_tasks.pbkdf2.delay(
                    common.make_event(run_tag, i, "hash.pbkdf2", a.iterations, enqueued_at).decode())

    def start_worker():
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "--pool", "prefork",
             "--concurrency", str(a.workers), "-Q", celery_tasks.QUEUE, "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel", "WARNING"],
            cwd=os.path.dirname(os.path.abspath(__file__)), stdout=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not r.exists(celery_tasks.READY):
            if worker.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"celery worker did not start (exit {worker.returncode})")
            time.sleep(0.02)
        return worker

    cpu = common.CpuMeter(["redis"], [])
    if a.mode == "prefill":
        produce()
        worker = start_worker()
        cpu.add_workers([worker.pid])
        # Its start-up is not the events' cost (it may have run a task or two by now: a slight undercount).
        cpu.start_at["workers"] = common.tree_cpu_seconds(worker.pid)
        started = float(r.get(celery_tasks.READY))  # the worker's own clock when it was ready to consume
    else:
        worker = start_worker()
        cpu.add_workers([worker.pid])
        cpu.start_at["workers"] = common.tree_cpu_seconds(worker.pid)  # its start-up is not the events' cost
        started = time.time()
        produce()
    try:
        deadline = time.time() + 600
        while r.llen(celery_tasks.DONE) < a.n:
            if worker.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"only {r.llen(celery_tasks.DONE)} of {a.n} tasks done")
            time.sleep(0.01)
        cpu_us = cpu.per_event_us(a.n)
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown; it ends its pool children itself
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    records = []
    for line in r.lrange(celery_tasks.DONE, 0, -1):
        index, enqueued_at, done_at = line.decode().split(",")
        records.append((int(index), float(enqueued_at), float(done_at)))
    r.delete(celery_tasks.QUEUE, celery_tasks.DONE, celery_tasks.READY)
    common.emit(common.figures("Celery acks_late, Redis broker, PBKDF2", a.mode, a.n, records, started, {
        "workload": "cpu", "workers": a.workers, "cpu_us_per_event": cpu_us}), a.out)


if __name__ == "__main__":
    main()
