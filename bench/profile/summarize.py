#!/usr/bin/env python3
"""Where each service's CPU went in a perf recording of a bench scenario.

    python3 bench/profile/summarize.py <label>.perf.data <label>.json [top]

Maps perf's process ids to the bench's services (the JSON's processes[].pids), then per service prints its share of the
samples, the inclusive share of each category (a sample counts for a category when any frame of its stack belongs to
it, so categories overlap) and the top leaf frames. JIT-compiled frames are named through the perf maps the services
write with DOTNET_PerfMapEnabled=1.
"""
import collections, json, re, subprocess, sys

CATEGORIES = [
    ("PBKDF2 (libcrypto)", lambda f: "libcrypto" in f),
    ("GC", lambda f: re.search(r"gc_heap|GCHeap|WKS::|SVR::|GarbageCollect|gc_alloc|Alloc\b|JIT_New", f) is not None),
    ("StackExchange.Redis", lambda f: "StackExchange.Redis" in f or "Pipelines.Sockets" in f),
    ("RabbitMQ.Client", lambda f: "RabbitMQ.Client" in f),
    ("MassTransit", lambda f: "MassTransit" in f),
    ("System.Text.Json", lambda f: "System.Text.Json" in f),
    ("Kestrel / ASP.NET Core", lambda f: "Microsoft.AspNetCore" in f),
    ("HttpClient", lambda f: "System.Net.Http" in f),
    ("Logging", lambda f: "Microsoft.Extensions.Logging" in f),
    ("OpenTelemetry / metrics", lambda f: "OpenTelemetry" in f or "System.Diagnostics.Metrics" in f or "System.Diagnostics.Activity" in f),
    ("sockets (managed)", lambda f: "System.Net.Sockets" in f),
    ("thread pool / tasks", lambda f: "System.Threading" in f),
    ("JIT (tiered compilation)", lambda f: "libclrjit" in f),
    ("kernel", lambda f: "[kernel" in f),
]


def main():
    data, run = sys.argv[1], json.load(open(sys.argv[2]))
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 12
    owner = {}
    for scenario in run["scenarios"]:
        for p in scenario["processes"]:
            for pid in p["pids"]:
                owner[pid] = p["resource"]
    text = subprocess.run(["perf", "script", "-i", data, "-F", "pid,tid,comm,ip,sym,dso"],
                          capture_output=True, text=True, errors="replace").stdout
    total = 0
    per = collections.Counter()
    cats = collections.defaultdict(collections.Counter)
    leaves = collections.defaultdict(collections.Counter)
    threads = collections.defaultdict(collections.Counter)
    for block in text.split("\n\n"):
        lines = [l for l in block.strip().split("\n") if l.strip()]
        if not lines:
            continue
        m = re.match(r"^(.*?)\s+(\d+)/(\d+)\s*$", lines[0])
        if not m:
            continue
        comm, pid = m.group(1).strip(), int(m.group(2))
        total += 1
        who = owner.get(pid, "other")
        per[who] += 1
        frames = [l.strip().split(None, 1)[1] if len(l.strip().split(None, 1)) > 1 else l for l in lines[1:]]
        threads[who][comm] += 1
        if frames:
            leaves[who][re.sub(r"\+0x[0-9a-f]+", "", frames[0])[:140]] += 1
        seen = set()
        for name, test in CATEGORIES:
            if any(test(f) for f in frames):
                seen.add(name)
        for name in seen:
            cats[who][name] += 1
    print(f"{total} samples")
    for who, n in per.most_common():
        print(f"\n== {who}: {n} samples, {100*n/total:.1f} % of all")
        if who == "other":
            continue
        for name, c in sorted(cats[who].items(), key=lambda kv: -kv[1]):
            print(f"   {100*c/n:5.1f} %  {name}")
        print("   threads: " + ", ".join(f"{t} {100*c/n:.0f} %" for t, c in threads[who].most_common(6)))
        print("   top leaf frames:")
        for f, c in leaves[who].most_common(top):
            print(f"   {100*c/n:5.1f} %  {f}")


if __name__ == "__main__":
    main()
