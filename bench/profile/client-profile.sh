#!/usr/bin/env bash
# Where the bench client's own CPU goes while one measured burst runs: perf samples of the bench process only (with
# its perf map, so JIT-compiled frames have names) plus the CPU of every thread of the client and the services
# (threadcpu.py). The progress line first appears ~5 s into the burst: size the burst so that <seconds> fits after it;
# run it under the measurement lock (flock -o /work/wt/bench.lock …: -o keeps the lock out of the children).
#   bench/profile/client-profile.sh <out dir> <label> <seconds> <bench dll> <bench burst args...>
# <bench dll>: bench/EventPipeline.Bench/bin/Release/net10.0/EventPipeline.Bench.dll, or a copy of an older build
# e.g. bench/profile/client-profile.sh /tmp/cprof single 4 bench/EventPipeline.Bench/bin/Release/net10.0/EventPipeline.Bench.dll \
#        burst --workload noop-cpu -n 40000 --batch 1 --connections 16 --warmup 3000
set -euo pipefail
out=$1 label=$2 seconds=$3 dll=$4; shift 4
mkdir -p "$out"
log="$out/$label.bench.log"
DOTNET_PerfMapEnabled=1 DOTNET_EnableWriteXorExecute=0 dotnet "$dll" "$@" --ceiling-events 100 --ceiling-rounds 1 \
  --out "$out" --label "$label" >"$log" 2>&1 &
bench=$!
python3 bench/profile/threadcpu.py "$log" >"$out/$label.threads.txt" &
threads=$!
until grep -qF '[burst-' "$log" 2>/dev/null; do
  kill -0 $bench 2>/dev/null || { echo "bench exited early"; cat "$log"; exit 1; }
  sleep 0.1
done
perf record -F 999 -g -p $bench -o "$out/$label.perf.data" -- sleep "$seconds" 2>/dev/null
wait $bench
wait $threads
perf report -i "$out/$label.perf.data" --stdio --no-children --sort dso,sym -g none 2>/dev/null | grep -E '^ +[0-9]' | head -150 >"$out/$label.sym.txt" || true
perf report -i "$out/$label.perf.data" --stdio --no-children --sort comm 2>/dev/null | grep -E '^ +[0-9]' >"$out/$label.comm.txt" || true
echo "written: $out/$label.{perf.data,sym.txt,comm.txt,threads.txt,bench.log}"
