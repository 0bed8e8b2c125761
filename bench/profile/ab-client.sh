#!/usr/bin/env bash
# Paired A/B runs of two builds of the bench client against the same services (the AppHost each build starts runs
# this checkout's Release services): pairs alternate the order (A B, B A, A B, …) so that drift on a shared machine
# does not favour one side; each run holds the measurement lock only while it runs (-o: the AppHost's children do not
# inherit the lock, so one that outlives the run cannot keep it). Prints, per run, the client's CPU
# per event, each service's, and the rates, from the run's JSON.
#   bench/profile/ab-client.sh <out dir> <pairs> <A dir> <B dir> <bench args...>
# <A dir>/<B dir>: a copy of bench/EventPipeline.Bench/bin/Release/net10.0 of each build, e.g.
#   cp -r bench/EventPipeline.Bench/bin/Release/net10.0 /tmp/bench-old   # before the change, then rebuild
#   bench/profile/ab-client.sh /tmp/ab 3 /tmp/bench-old bench/EventPipeline.Bench/bin/Release/net10.0 \
#     burst --workload noop-cpu -n 20000 --batch 1 --connections 16 --warmup 3000
# BENCH_LOCK= (empty) runs without taking the lock, for a caller that holds it already.
set -euo pipefail
out=$1 pairs=$2 a=$3 b=$4; shift 4
mkdir -p "$out"
for i in $(seq 1 "$pairs"); do
  if (( i % 2 )); then order="A B"; else order="B A"; fi
  for side in $order; do
    dir=$a; [[ $side == B ]] && dir=$b
    label="$side-$i"
    ${BENCH_LOCK-flock -o /work/wt/bench.lock} dotnet "$dir/EventPipeline.Bench.dll" "$@" --out "$out" --label "$label" >"$out/$label.log" 2>&1 \
      || { echo "$label failed"; tail -20 "$out/$label.log"; exit 1; }
    python3 - "$out/$label.json" "$label" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["scenarios"][-1]
procs = " ".join(f"{p['resource']}={p['cpuUsPerEvent']}" for p in s["processes"])
print(f"{sys.argv[2]}: client {s['clientCpuUsPerEvent']} us/event | services {s['cpuUsPerEvent']} ({procs}) | "
      f"enqueue {s['enqueueRate']}/s end-to-end {s['endToEndRate']}/s | accepted {s['accepted']} lost {s['lost']} dup {s['duplicated']} | "
      f"machine {s['machineCpuPercentOfOneCore']}%", flush=True)
PY
  done
done
