#!/usr/bin/env bash
# Command 1: brings the whole system up. Without a healthy container engine it first installs Debian's brokers
# (once), then runs the Aspire AppHost, which prints the dashboard URL with its login token.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only loopback traffic: no SDK telemetry, no version checks.
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 ASPIRE_VERSION_CHECK_DISABLED=true

engine_answers() {
  for rt in docker podman; do
    command -v "$rt" >/dev/null 2>&1 && timeout 5 "$rt" info >/dev/null 2>&1 && return 0
  done
  return 1
}

if ! engine_answers; then
  echo "up: no container engine answers; the brokers run as local processes"
  bash eng/install-deps.sh
fi

exec dotnet run --project AppHost "$@"
