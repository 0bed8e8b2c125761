"""Renders one run's JSON lines (run.sh's <label>.jsonl) as a markdown table."""
import json
import sys


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    machine = next((r for r in rows if r["baseline"] == "machine"), {})
    print(f"# Python baselines: {machine.get('label', '')}\n")
    print(f"Started {machine.get('started', '?')}; {machine.get('python', '')}; webhook sink: {machine.get('sink', '?')}.")
    print(f"Machine at the start: `{machine.get('uptime', '').strip()}`\n")
    print("| baseline | mode | events | events/s | p50 ms | p99 ms | lost | duplicated | load (1 min) at the end |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["baseline"] in ("machine", "ceiling"):
            continue
        # A pre-filled backlog's latency is its queue wait (the whole drain): only a burst's percentiles mean much.
        burst = r["mode"] == "burst"
        p50 = f"{r['p50_ms']:,.0f}" if burst else "—"
        p99 = f"{r['p99_ms']:,.0f}" if burst else "—"
        print(f"| {r['baseline']} | {r['mode']} | {r['events']:,} | {r['events_per_s']:,.0f} | {p50} | {p99} "
              f"| {r['lost']} | {r['duplicated']} | {r['load_avg_1m']:.1f} |")
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
          "last completion), latency = completion − the producer's clock when the event's batch went out.")


if __name__ == "__main__":
    main()
