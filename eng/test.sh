#!/usr/bin/env bash
# Command 2: installs what the tests need (real redis-server and rabbitmq-server; no mocks), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only loopback traffic: no SDK telemetry, no version checks.
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 ASPIRE_VERSION_CHECK_DISABLED=true
# Every .NET process the tests start (services, AppHosts, the bench) runs with tiered compilation on, whatever the
# project ships (the workers and the receiver turn it off for idle CPU: docs/operations.md). The JIT mode changes no
# behaviour; a service start then costs ~40 % less CPU (session 18, to /health/ready beside real brokers: Worker.Io
# 1.7 s against 2.9 s, Worker.Cpu 1.3 against 2.0, Producer.Api 1.6 against 2.8), and the suite starts services
# hundreds of times on two shared cores. Bench.Tests' quick suite and chaos runs check accounting, not speed; the
# measured bench runs (docs/benchmarks.md) and Worker.Cpu.Measurements, which must see the services as they ship, are
# not run from here, and DelayedEventTests' fixture, which measures its workers' idle cost, sets it back to 0 for them.
# docs/test-suite-time.md, "Session 18".
export DOTNET_TieredCompilation=1

bash eng/install-deps.sh

results="$(pwd)/artifacts/test-results"
rm -rf "$results"
status=0
dotnet build EventPipeline.sln
# Two streams of test projects at once. One functional project alone leaves about half of 2 cores idle (measured:
# Producer.Api.FunctionalTests used 379 s of CPU in 395 s of wall time; most of its time is waiting on brokers,
# timers and processes it started), so two at once finish in much less time than one after the other. Each project
# keeps its own parallelism setting inside. The two biggest functional projects that run their tests one at a time
# start together; the one that runs its classes in parallel (Worker.Cpu.FunctionalTests) overlaps the lighter ones.
# Balanced on session 16's last CI run (24.2 min): 10.4 + 7.5 min against 7.6 + 5.2 + 6.8 + 1.9 + 1.2, the first
# stream ending ~4.5 min before the second; so the unit and infra projects (1.2 min) run at the first stream's tail,
# after Worker.Cpu.FunctionalTests (at its head they pushed that project's timing-sensitive last minutes beside the
# AppHost projects: session 16, docs/test-suite-time.md).
streams=(
  "Producer.Api.FunctionalTests Worker.Cpu.FunctionalTests Producer.Api.UnitTests Worker.Cpu.UnitTests Infra.Tests"
  "Worker.Io.FunctionalTests Bench.Tests EndToEnd.Tests Observability.Tests"
)
# Every test project must be in exactly one stream, or a new project would silently not run.
listed=" ${streams[*]} "
for csproj in tests/*/*.csproj; do
  grep -q '<IsTestProject>true</IsTestProject>' "$csproj" || continue
  name=$(basename "$csproj" .csproj)
  if [ "$(grep -o " $name " <<<"$listed" | wc -l)" -ne 1 ]; then
    echo "eng/test.sh: test project $name is not in exactly one stream; add it to one" >&2
    exit 2
  fi
done

run_stream() {
  local rc=0 project
  for project in $1; do
    # Each line says which project wrote it, since two projects write at once. The TRX file is named after the
    # project: two runs starting in the same second would otherwise write the same timestamped file name.
    # A test that hangs is ended after 12 minutes (the longest test takes about 4) and reported failed, so a stream
    # cannot wait until CI's own limit and end without the summary below.
    dotnet test "tests/$project/$project.csproj" --no-build --logger "console;verbosity=normal" \
      --logger "trx;LogFileName=$project.trx" --results-directory "$results" \
      --blame-hang-timeout 12m --blame-hang-dump-type none "${@:2}" 2>&1 \
      | sed -u "s/^/[$project] /" || rc=1
  done
  return $rc
}
pids=()
# Stopped (Ctrl+C, a CI cancel): the streams' processes are ended too, by PID, not left running without this script.
descendants() {
  local child
  for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    descendants "$child"
    echo "$child"
  done
}
stop_streams() {
  trap - TERM INT
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM $(descendants "$pid") "$pid" 2>/dev/null || true
  done
  wait
  exit 130
}
trap stop_streams TERM INT
for stream in "${streams[@]}"; do
  run_stream "$stream" "$@" &
  pids+=($!)
done
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done

# One closing line over all test projects, counted from the TRX files.
passed=0; failed=0; skipped=0
for trx in "$results"/*.trx; do
  [ -f "$trx" ] || continue
  counters=$(grep -o '<Counters [^>]*>' "$trx" | head -1)
  p=$(sed -n 's/.* passed="\([0-9]*\)".*/\1/p' <<<"$counters"); f=$(sed -n 's/.* failed="\([0-9]*\)".*/\1/p' <<<"$counters")
  t=$(sed -n 's/.* total="\([0-9]*\)".*/\1/p' <<<"$counters"); e=$(sed -n 's/.* executed="\([0-9]*\)".*/\1/p' <<<"$counters")
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); skipped=$((skipped + ${t:-0} - ${e:-0}))
done
# Name each failed test with the start of its message at the very end, where a CI log tail shows it, and the last
# 8 lines of its own output (what it saw before it failed); kept short, since only the log's tail is shown.
if [ "$failed" -gt 0 ]; then
  echo "failed tests:"
  for trx in "$results"/*.trx; do
    [ -f "$trx" ] || continue
    awk '
      function unxml(s) { gsub(/&quot;/, "\"", s); gsub(/&lt;/, "<", s); gsub(/&gt;/, ">", s); gsub(/&apos;/, "'"'"'", s); gsub(/&amp;/, "\\&", s); return s }
      /<UnitTestResult / && /outcome="Failed"/ { match($0, /testName="[^"]*"/); print "  FAILED " unxml(substr($0, RSTART + 10, RLENGTH - 11)); infail = 1; lines = 0; n = 0 }
      infail && /<StdOut>/ { inout = 1 }
      inout { line = $0; gsub(/<\/?StdOut>/, "", line); out[n % 8] = unxml(line); n++ }
      inout && /<\/StdOut>/ { inout = 0 }
      infail && /<Message>/ { inmsg = 1 }
      inmsg && lines < 8 { line = $0; gsub(/<\/?Message>/, "", line); print "    " unxml(line); lines++ }
      inmsg && /<\/Message>/ { inmsg = 0 }
      infail && /<\/UnitTestResult>/ { if (n > 0) { print "    output (last lines):"; for (i = (n > 8 ? n - 8 : 0); i < n; i++) print "      " out[i % 8] } }
      /<\/UnitTestResult>/ { infail = 0; inmsg = 0; inout = 0 }
    ' "$trx"
  done
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit $status
