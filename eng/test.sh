#!/usr/bin/env bash
# Command 2: installs what the tests need (real redis-server and rabbitmq-server; no mocks), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only loopback traffic: no SDK telemetry, no version checks.
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 ASPIRE_VERSION_CHECK_DISABLED=true

bash eng/install-deps.sh

results="$(pwd)/artifacts/test-results"
rm -rf "$results"
status=0
dotnet build EventPipeline.sln
# One test project at a time (-m:1): each starts real brokers and services, and 2 cores do not take several at once.
dotnet test EventPipeline.sln --no-build -m:1 --logger "console;verbosity=normal" --logger trx --results-directory "$results" "$@" || status=$?

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
