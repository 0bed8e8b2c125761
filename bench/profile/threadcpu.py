#!/usr/bin/env python3
"""CPU time of the .NET services' and the bench client's threads by kind (JIT, GC, thread pool, the rest) while a
bench scenario runs.

    python3 bench/profile/threadcpu.py <bench log> > result.txt

Waits for the scenario's progress line ("[burst-" or "[steady-") in the bench log, then every 100 ms reads
/proc/<pid>/task/*/stat of every process of this checkout's Release services (run it from the repository root), and stops when the log says the
scenario is over ("[ceiling] after" or "written:"). A thread's figure is its last reading minus its
reading at the start (zero for a thread born during the window); a thread that ends within the window loses at most
its last 100 ms. (The figures in docs/benchmarks.md were taken before threads born in the window counted from zero, so
they are lower bounds.) Unlike a whole-process
figure, the JIT's share does not move with what the neighbours on the machine do.
"""
import collections, glob, os, re, sys, time

SERVICES = {"Producer.Api": "producer-api", "Worker.Cpu": "worker-cpu", "Worker.Io": "worker-io", "Downstream.Receiver": "downstream"}
HZ = os.sysconf("SC_CLK_TCK")


def kind(comm):
    if comm.startswith(".NET Tiered Com"):
        return "JIT (tiered compilation)"
    if "GC" in comm:
        return "GC"
    if comm.startswith(".NET TP") or comm.startswith(".NET ThreadPool"):
        return "thread pool"
    if comm.startswith(".NET SynchManag") or comm.startswith(".NET Sockets"):
        return "socket/wait events"
    if comm.startswith(".NET Timer") or comm.startswith(".NET Long Runn"):
        return "timers/long-running"
    return "other threads"


def services():
    # Only this checkout's Release builds: other checkouts on the machine may run the same services.
    root = os.getcwd().rstrip("/") + "/"
    found = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            cmd = open(d + "/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("dotnet\0run") or "\0run\0" in cmd:
            continue
        # The bench client itself (this checkout's build or a copy of an older build for a paired run; the
        # measurement lock keeps other checkouts' bench runs out of the window).
        if "/EventPipeline.Bench.dll" in cmd or "/EventPipeline.Bench\0" in cmd:
            found[int(d[6:])] = "bench-client"
            continue
        if root not in cmd or "/bin/Release/" not in cmd:
            continue
        for dll, name in SERVICES.items():
            if f"/{dll}.dll" in cmd or f"/{dll}\0" in cmd:
                found[int(d[6:])] = name
    return found


def tasks(pid):
    for t in glob.glob(f"/proc/{pid}/task/*/stat"):
        try:
            s = open(t).read()
        except OSError:
            continue
        m = re.match(r"(\d+) \((.*)\) (.*)", s)
        if m:
            f = m.group(3).split()
            yield int(m.group(1)), m.group(2), (int(f[11]) + int(f[12])) / HZ


def main():
    log = sys.argv[1]
    while "[burst-" not in open(log).read() and "[steady-" not in open(log).read():
        time.sleep(0.1)
    first, last, owner, comms = {}, {}, {}, {}
    procs = services()
    initial = {(pid, tid) for pid in procs for tid, _, _ in tasks(pid)}
    while True:
        text = open(log).read()
        done = "[ceiling] after" in text or "written:" in text
        for pid, name in procs.items():
            for tid, comm, cpu in tasks(pid):
                key = (pid, tid)
                # A thread born during the window (the JIT's worker is started on demand) counts from zero.
                first.setdefault(key, cpu if key in initial else 0.0)
                last[key] = cpu
                owner[key] = (name, kind(comm))
                comms[key] = comm
        if done:
            break
        time.sleep(0.1)
    totals = collections.defaultdict(collections.Counter)
    names = collections.defaultdict(collections.Counter)
    for key, (name, k) in owner.items():
        totals[name][k] += last[key] - first[key]
        names[name][comms[key]] += last[key] - first[key]
    for name in sorted(totals):
        all_ = sum(totals[name].values())
        print(name, f"{all_:.2f} s:", ", ".join(f"{k} {v:.2f} s" for k, v in totals[name].most_common()))
        # By thread name too: which of the runtime's threads (epoll, timers, GC, tiering) or a named one of the app.
        print("  threads:", ", ".join(f"{c} {v:.2f} s" for c, v in names[name].most_common(8) if v >= 0.005))


if __name__ == "__main__":
    main()
