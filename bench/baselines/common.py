"""What every baseline shares: the 600-byte event, the PBKDF2 work, the worker-process harness and the figures.

The baselines themselves (redis_streams.py, pika_queue.py, celery_tasks.py) are what a team would write in an
afternoon; this module is the measuring around them, kept out of their way: each worker process only appends
(index, enqueued-at, done-at) to a local list and bumps one shared counter per completion, and hands its list back
when it is told to stop.
"""
import hashlib
import json
import multiprocessing as mp
import os
import statistics
import time

EVENT_BYTES = 600  # every event body is exactly this long, as in the EventPipeline bench


def make_event(run_tag: str, index: int, event_type: str, iterations: int, enqueued_at: float) -> bytes:
    """A JSON event of exactly EVENT_BYTES bytes: id, type, payload {data, iterations}, enqueuedAt (unix s)."""
    event = {"id": f"bench-{run_tag}-{index}", "type": event_type, "enqueuedAt": round(enqueued_at, 6),
             "payload": {"iterations": iterations, "data": ""}}
    pad = EVENT_BYTES - len(json.dumps(event, separators=(",", ":")).encode())
    if pad < 0:
        raise ValueError("event header is longer than the event")
    event["payload"]["data"] = "x" * pad
    body = json.dumps(event, separators=(",", ":")).encode()
    assert len(body) == EVENT_BYTES, len(body)
    return body


def index_of(event_id: str) -> int:
    return int(event_id.rsplit("-", 1)[1])


def do_work(event: dict) -> str:
    """The CPU lane's work: PBKDF2-HMAC-SHA256 of payload.data with the event id as salt, 32 bytes, hex (as Worker.Cpu);
    'noop' events do nothing."""
    if event["type"] == "hash.pbkdf2":
        payload = event["payload"]
        return hashlib.pbkdf2_hmac("sha256", payload["data"].encode(), event["id"].encode(),
                                   payload["iterations"], 32).hex()
    return ""


class Recorder:
    """Per worker process: completions kept locally, one shared counter for the parent to see the end."""

    def __init__(self, done_counter):
        self.done_counter = done_counter
        self.records = []  # (index, enqueued_at, done_at)

    def completed(self, event: dict) -> None:
        now = time.time()
        self.records.append((index_of(event["id"]), event["enqueuedAt"], now))
        with self.done_counter.get_lock():
            self.done_counter.value += 1


class WorkerSet:
    """N worker processes running target(worker_no, ctl, *args); ctl has ready/go/stop events, the counter and the
    queue the records come back on. The processes are started (and connected) before the clock starts."""

    def __init__(self, target, count: int, args: tuple):
        ctx = mp.get_context("fork")
        self.ctl = Control(ctx)
        self.procs = [ctx.Process(target=_run_worker, args=(target, i, self.ctl, args), daemon=True)
                      for i in range(count)]

    def start(self, timeout: float = 60.0) -> None:
        for p in self.procs:
            p.start()
        deadline = time.time() + timeout
        while self.ctl.ready.value < len(self.procs):
            self._check_alive()
            if time.time() > deadline:
                raise TimeoutError("workers did not become ready")
            time.sleep(0.01)

    @property
    def pids(self) -> list:
        return [p.pid for p in self.procs]

    def go(self) -> float:
        started = time.time()
        self.ctl.go.set()
        return started

    def wait_done(self, n: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while self.ctl.done.value < n:
            self._check_alive()
            if time.time() > deadline:
                raise TimeoutError(f"only {self.ctl.done.value} of {n} events completed in {timeout} s")
            time.sleep(0.002)

    def stop(self) -> list:
        self.ctl.stop.set()
        records = []
        for _ in self.procs:
            records.extend(self.ctl.results.get(timeout=60))
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        return records

    def _check_alive(self) -> None:
        for p in self.procs:
            if p.exitcode not in (None, 0):
                raise RuntimeError(f"worker process {p.pid} exited with {p.exitcode}")


class Control:
    def __init__(self, ctx):
        self.ready = ctx.Value("i", 0)
        self.done = ctx.Value("q", 0)
        self.go = ctx.Event()
        self.stop = ctx.Event()
        self.results = ctx.Queue()

    def mark_ready(self) -> None:
        with self.ready.get_lock():
            self.ready.value += 1


def _run_worker(target, worker_no, ctl, args):
    recorder = Recorder(ctl.done)
    target(worker_no, ctl, recorder, *args)
    ctl.results.put(recorder.records)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _children() -> dict:
    """ppid -> [pid] of every process now."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of a process and every live descendant (all their threads), from /proc."""
    children, total, todo = _children(), 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(children.get(p, []))
    return total


class CpuMeter:
    """CPU seconds spent over a window, by role: 'producer' is this process (sending, and polling for the end);
    the other roles are process trees given by PID (the worker processes, the broker, the webhook sink). The broker
    and sink PIDs come from run.sh in BASELINE_PIDS="redis=PID,rabbitmq=PID,sink=PID"; `wanted` names the ones
    this baseline uses."""

    def __init__(self, wanted: list, workers: list):
        given = dict(item.split("=") for item in os.environ.get("BASELINE_PIDS", "").split(",") if "=" in item)
        self.roles = {"workers": list(workers)}
        self.roles.update({name: [int(given[name])] for name in wanted if name in given})
        self.start_at = self._read()

    def _read(self) -> dict:
        readings = {role: sum(tree_cpu_seconds(p) for p in pids) for role, pids in self.roles.items()}
        readings["producer"] = time.process_time()
        return readings

    def add_workers(self, pids: list) -> None:
        """Processes started after the window opened (a Celery worker started on a pre-filled backlog)."""
        self.roles["workers"] = list(pids)

    def per_event_us(self, n: int, start_at: dict | None = None) -> dict:
        end, start = self._read(), start_at or self.start_at
        result = {role: (end[role] - start.get(role, 0.0)) * 1e6 / n for role in end}
        result["total"] = sum(result.values())
        return result


def percentile(sorted_values: list, p: float) -> float:
    """Nearest-rank percentile, as the EventPipeline bench computes them."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-p * len(sorted_values) // 100)))  # ceil(p/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def figures(name: str, mode: str, n: int, records: list, started: float, extra: dict | None = None) -> dict:
    """events/s from `started` to the last completion: for a pre-filled backlog the moment the connected, idle workers
    are released on it, for a burst the producer's first send (as the EventPipeline bench's end-to-end figure);
    latency = done-at minus enqueued-at (the producer's clock before its batch went out); lost/duplicated from the
    completions' indexes."""
    indexes = [r[0] for r in records]
    distinct = len(set(indexes))
    last = max(r[2] for r in records)
    first = min(r[2] for r in records)
    latencies = sorted((r[2] - r[1]) * 1000 for r in records)
    # Not first-to-last completion: with 512 webhooks in flight the first completion comes a whole 50 ms wave late.
    seconds, rate = last - started, len(records) / (last - started)
    result = {
        "baseline": name, "mode": mode, "events": n, "completed": len(records),
        "lost": n - distinct, "duplicated": len(records) - distinct,
        "seconds": seconds, "events_per_s": rate,
        "first_to_last_s": last - first,
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99), "max_ms": latencies[-1],
        "load_avg_1m": os.getloadavg()[0],
    }
    result.update(extra or {})
    return result


def emit(result: dict, out: str | None) -> None:
    line = json.dumps(result)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def median(values: list) -> float:
    return statistics.median(values)
