"""Side by side: Python baseline runs (run.sh's .jsonl) and EventPipeline suite runs (the bench's suite .json), paired
in the order given, one column per pair, with the spread (slowest-fastest) over the pairs.

    python compare.py --python runs/python-pair-{1,2,3}.jsonl --suite /tmp/suite/pair-{1,2,3}.json
"""
import argparse
import json


def load_python(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return {"machine": next(r for r in rows if r["baseline"] == "machine"),
            "ceiling": [r for r in rows if r["baseline"] == "ceiling"],
            "runs": [r for r in rows if r["baseline"] not in ("machine", "ceiling")]}


def find(py, prefix, mode):
    return next((r for r in py["runs"] if r["baseline"].startswith(prefix) and r["mode"] == mode), None)


def scenario(suite, name):
    return next((s for s in suite["scenarios"] if s["name"] == name), None)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--python", nargs="+", required=True)
    p.add_argument("--suite", nargs="+", required=True)
    a = p.parse_args()
    pys = [load_python(f) for f in a.python]
    suites = [json.load(open(f)) for f in a.suite]
    if len(pys) != len(suites):
        raise SystemExit("give as many suite runs as Python runs (they are paired in order)")

    lines = []  # (label, [value per pair], [number per pair for the spread])

    def row(label, values, numbers, unit=""):
        finite = [x for x in numbers if x is not None]
        spread = f"{min(finite):,.0f}–{max(finite):,.0f}{unit}" if finite else "—"
        lines.append((label, values, spread))

    row("load average (1 min) when the Python run started / at its last baseline",
        [f"{py['machine']['uptime'].split('load average:')[1].split(',')[0].strip()} / {py['runs'][-1]['load_avg_1m']:.2f}"
         for py in pys], [None])
    row("load average (1 min) before / after the suite",
        [f"{s['machine']['loadAverageBefore'].split()[0]} / {s['machine']['loadAverageAfter'].split()[0]}"
         for s in suites], [None])

    py_ceiling = [max(c["best"] for c in py["ceiling"]) for py in pys]
    row("PBKDF2 ceiling, Python, 2 processes (best round; slowest)",
        [f"{max(c['best'] for c in py['ceiling']):,.0f}; {min(c['slowest'] for c in py['ceiling']):,.0f}"
         for py in pys], py_ceiling, "/s")
    ep_ceiling = [s["ceiling"]["eventsPerSecond"] for s in suites]
    row("PBKDF2 ceiling, EventPipeline bench, 2 threads (best round; slowest)",
        [f"{s['ceiling']['eventsPerSecond']:,.0f}; {s['ceiling']['min']:,.0f}" for s in suites], ep_ceiling, "/s")

    def py_cell(r, ceiling=None, p99=False):
        if r is None:
            return "—", None
        text = f"{r['events_per_s']:,.0f}/s"
        if ceiling:
            text += f" ({100 * r['events_per_s'] / ceiling:.0f} %)"
        if p99:
            text += f", p99 {r['p99_ms']:,.0f} ms"
        if "cpu_us_per_event" in r:
            text += f" · {r['cpu_us_per_event']['total']:,.0f} µs"
        return text, r["events_per_s"]

    def ep_cell(s, ceiling=None):
        if s is None:
            return "—", None
        text = f"{s['endToEndRate']:,.0f}/s"
        if ceiling:
            text += f" ({100 * s['endToEndRate'] / ceiling:.0f} %)"
        text += f", p99 {s['latency']['p99']:,.0f} ms · {s['cpuUsPerEvent']:,.0f} + {s['clientCpuUsPerEvent']:,.0f} µs"
        return text, s["endToEndRate"]

    def py_row(label, prefix, mode, with_ceiling=False, p99=False):
        cells = [py_cell(find(py, prefix, mode), c if with_ceiling else None, p99) for py, c in zip(pys, py_ceiling)]
        row(label, [c[0] for c in cells], [c[1] for c in cells], "/s")

    def ep_row(label, name, with_ceiling=False):
        cells = [ep_cell(scenario(s, name), c if with_ceiling else None) for s, c in zip(suites, ep_ceiling)]
        row(label, [c[0] for c in cells], [c[1] for c in cells], "/s")

    py_row("**CPU lane 10,000 × PBKDF2**: redis-py Streams, pre-filled", "redis-py Streams, PBKDF2", "prefill", True)
    py_row("redis-py Streams, burst", "redis-py Streams, PBKDF2", "burst", True, True)
    py_row("Celery acks_late, pre-filled", "Celery", "prefill", True)
    py_row("Celery acks_late, burst", "Celery", "burst", True, True)
    ep_row("EventPipeline cpu-burst (HTTP ingest included)", "cpu-burst", True)
    py_row("**I/O lane 2,000 × 50 ms**: redis-py Streams + aiohttp, pre-filled", "redis-py Streams + aiohttp", "prefill")
    py_row("redis-py Streams + aiohttp, burst", "redis-py Streams + aiohttp", "burst", p99=True)
    ep_row("EventPipeline io-burst", "io-burst")
    py_row("**noop 10,000, Redis lane**: redis-py Streams, pre-filled", "redis-py Streams, noop", "prefill")
    py_row("redis-py Streams, burst", "redis-py Streams, noop", "burst", p99=True)
    ep_row("EventPipeline noop-cpu-burst", "noop-cpu-burst")
    py_row("**noop 10,000, RabbitMQ lane**: pika classic, no confirms, pre-filled", "pika, classic", "prefill")
    py_row("pika classic, no confirms, burst", "pika, classic", "burst", p99=True)
    py_row("pika quorum, no confirms, burst", "pika, quorum", "burst", p99=True)
    ep_row("EventPipeline noop-io-burst (quorum queue, confirms)", "noop-io-burst")

    print("| workload · figure | " + " | ".join(f"pair {i + 1}" for i in range(len(pys))) + " | spread |")
    print("|---|" + "---|" * len(pys) + "---|")
    for label, values, spread in lines:
        print(f"| {label} | " + " | ".join(values) + f" | {spread} |")
    print()
    print("Python cells: events/s (of the Python ceiling), p99 for bursts · CPU µs per event of workers, producer, "
          "broker and sink together. EventPipeline cells: end-to-end events/s (of the bench's ceiling), p99 · CPU µs "
          "per event of all services + the bench client.")


if __name__ == "__main__":
    main()
