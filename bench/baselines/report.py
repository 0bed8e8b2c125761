"""Renders one run's JSON lines (run.sh's <label>.jsonl) as a markdown table."""
import json
import sys


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    machine = next((r for r in rows if r["baseline"] == "machine"), {})
    print(f"# Python baselines: {machine.get('label', '')}\n")
    print(f"Started {machine.get('started', '?')}; {machine.get('python', '')}; webhook sink: {machine.get('sink', '?')}.")
    print(f"Machine at the start: `{machine.get('uptime', '').strip()}`\n")
    ceilings = [r["best"] for r in rows if r["baseline"] == "ceiling"]
    ceiling = max(ceilings) if ceilings else None
    print("| baseline | mode | events | events/s | of the ceiling | p50 ms | p99 ms | lost | dup "
          "| CPU µs/event: workers · producer · broker · sink = total | load at the end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["baseline"] in ("machine", "ceiling"):
            continue
        # A pre-filled backlog's latency is its queue wait (the whole drain): only a burst's percentiles mean much.
        burst = r["mode"] == "burst"
        p50 = f"{r['p50_ms']:,.0f}" if burst else "—"
        p99 = f"{r['p99_ms']:,.0f}" if burst else "—"
        ratio = f"{100 * r['events_per_s'] / ceiling:.1f} %" if r["workload"] == "cpu" and ceiling else "—"
        c = r.get("cpu_us_per_event", {})
        broker = c.get("redis", c.get("rabbitmq", 0))
        cpu = (f"{c['workers']:,.0f} · {c['producer']:,.0f} · {broker:,.0f} · {c.get('sink', 0):,.0f} = "
               f"**{c['total']:,.0f}**") if c else "—"
        print(f"| {r['baseline']} | {r['mode']} | {r['events']:,} | {r['events_per_s']:,.0f} | {ratio} | {p50} | {p99} "
              f"| {r['lost']} | {r['duplicated']} | {cpu} | {r['load_avg_1m']:.1f} |")
    print()
    print("| PBKDF2 ceiling, 2 processes, calls/s | best | median | slowest | rounds |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["baseline"] == "ceiling":
            rounds = ", ".join(f"{x:,.0f}" for x in r["rounds"])
            print(f"| {r['label']} | {r['best']:,.0f} | {r['median']:,.0f} | {r['slowest']:,.0f} | {rounds} |")
    print()
    print("prefill: the backlog is written first, then the connected, idle workers are released on it (Celery: the "
          "worker is started on it and the clock starts at its worker_ready signal); events/s = N / (release → last "
          "completion). burst: workers wait, the producer then sends as fast as it can; events/s = N / (first send → "
          "last completion), latency = completion − the producer's clock when the event's batch went out. "
          "of the ceiling: events/s over the best ceiling round of this run. CPU µs/event: utime+stime from the first "
          "send to the last completion over the events, of the worker processes (Celery: its whole process tree), "
          "the producer process (sending and polling for the end), the broker and the webhook sink.")


if __name__ == "__main__":
    main()
