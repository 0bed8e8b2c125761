#!/usr/bin/env python3
"""CPU time by kind of process while something runs (docs/test-suite-time.md, "Session 18").

Usage: python3 eng/cpu-by-process.py OUT & ... run the suite ...; touch OUT.stop
Reads /proc once a second and keeps each process's last utime+stime (a process's last second before it exits is
missed; a process already running counts from the start only); on OUT.stop it writes CPU seconds and process counts
per kind, largest first, to OUT. Kinds: RabbitMQ's VM (node or rabbitmqctl), `dotnet <dll>` by dll, `dotnet run`/`exec`/`test`, otherwise the executable's name.
"""
import collections
import os
import sys
import time

out = sys.argv[1]
last, kind, names, before = {}, {}, {}, {}
first_scan = True


def classify(pid, comm):
    try:
        cmd = [c.decode(errors="replace") for c in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0") if c]
    except OSError:
        return None
    if not cmd:
        return comm
    exe = os.path.basename(cmd[0])
    if exe == "dotnet":
        for arg in cmd[1:]:
            if arg.endswith(".dll"):
                return "dotnet " + os.path.basename(arg)
            if arg in ("test", "build", "run", "exec"):
                return "dotnet " + arg
        return "dotnet ?"
    if exe == "beam.smp":
        return "beam rabbit" if "rabbit" in " ".join(cmd) else "beam other"
    return "chromium" if "chrom" in exe else exe[:30]


while not os.path.exists(out + ".stop"):
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        key = (pid, fields[19])  # pid and start time: a reused pid is another process
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
        except OSError:
            continue
        # A process that exec'd keeps its pid and start time (a RabbitMQ node is setsid, nice, sh, erl, then beam.smp):
        # named again whenever its command name changes.
        if key not in kind or names.get(key) != comm:
            found = classify(pid, comm)
            if found is None:
                continue
            kind[key], names[key] = found, comm
        last[key] = int(fields[11]) + int(fields[12])
        if first_scan:
            before[key] = last[key]  # running already: only what it uses from now on counts
    first_scan = False
    time.sleep(1)

ticks = os.sysconf("SC_CLK_TCK")
seconds, count = collections.Counter(), collections.Counter()
for key, used in last.items():
    seconds[kind[key]] += (used - before.get(key, 0)) / ticks
    count[kind[key]] += 1
with open(out, "w") as report:
    for name, used in seconds.most_common():
        report.write(f"{used:9.1f} s  {count[name]:5d} procs  {name}\n")
