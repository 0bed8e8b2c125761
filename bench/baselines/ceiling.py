"""The plain ceiling: PBKDF2-HMAC-SHA256 (10,000 iterations, 32 bytes) called directly on N processes, no queue.
After warm-up rounds (discarded), each timed round runs --calls calls split over the processes; a round's rate is
calls / (first process's start -> last process's end). Reports every round, and best/median/slowest."""
import argparse
import hashlib
import multiprocessing as mp
import time

import common


def _calls(args):
    count, iterations, barrier_at = args
    while time.time() < barrier_at:  # start together
        pass
    start = time.time()
    for i in range(count):
        hashlib.pbkdf2_hmac("sha256", b"x" * 500, f"bench-ceiling-{i}".encode(), iterations, 32)
    return start, time.time()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10_000)
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--label", default="ceiling")
    p.add_argument("--out")
    a = p.parse_args()
    rates = []
    with mp.get_context("fork").Pool(a.processes) as pool:
        for round_no in range(a.warmup + a.rounds):
            at = time.time() + 0.05
            spans = pool.map(_calls, [(a.calls // a.processes, a.iterations, at)] * a.processes, chunksize=1)
            rate = (a.calls // a.processes * a.processes) / (max(e for _, e in spans) - min(s for s, _ in spans))
            if round_no >= a.warmup:
                rates.append(rate)
    common.emit({"baseline": "ceiling", "label": a.label, "processes": a.processes, "rounds": rates,
                 "best": max(rates), "median": common.median(rates), "slowest": min(rates)}, a.out)


if __name__ == "__main__":
    main()
