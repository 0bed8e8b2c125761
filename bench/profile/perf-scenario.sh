#!/usr/bin/env bash
# Samples every process on the machine with perf while one bench scenario runs, with the .NET services writing perf
# maps (DOTNET_PerfMapEnabled=1) so that JIT-compiled frames have names. Output: <out>/<label>.perf.data and
# <out>/<label>.{pid,sym}.txt (CPU by process; top symbols per process).
#   bench/profile/perf-scenario.sh <out dir> <label> <seconds> <bench burst args...>
# e.g. bench/profile/perf-scenario.sh /tmp/prof cpu 20 burst --workload cpu -n 6000 --batch 100 --connections 8
set -euo pipefail
out=$1 label=$2 seconds=$3; shift 3
mkdir -p "$out"
sets=()
for svc in producer-api worker-cpu worker-io downstream; do
  sets+=(--set "$svc:DOTNET_PerfMapEnabled=1" --set "$svc:DOTNET_EnableWriteXorExecute=0")
done
log="$out/$label.bench.log"
dotnet run -c Release --no-build --project bench/EventPipeline.Bench -- "$@" "${sets[@]}" \
  --ceiling-events 100 --ceiling-rounds 1 --out "$out" --label "$label" >"$log" 2>&1 &
bench=$!
# The progress line of the scenario appears once the system is up and the load starts.
until grep -qF '[burst-' "$log" 2>/dev/null; do
  kill -0 $bench 2>/dev/null || { echo "bench exited early"; cat "$log"; exit 1; }
  sleep 0.2
done
perf record -F 499 -a -g -o "$out/$label.perf.data" -- sleep "$seconds" 2>/dev/null
wait $bench
perf report -i "$out/$label.perf.data" --stdio --no-children --sort pid 2>/dev/null | grep -E '^ +[0-9]' >"$out/$label.pid.txt"
perf report -i "$out/$label.perf.data" --stdio --no-children --sort pid,dso,sym -g none 2>/dev/null | grep -E '^ +[0-9]' | head -400 >"$out/$label.sym.txt"
echo "written: $out/$label.{perf.data,pid.txt,sym.txt,bench.log}"
