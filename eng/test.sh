#!/usr/bin/env bash
# Command 2: installs what the tests need (real redis-server and rabbitmq-server; no mocks), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only loopback traffic: no SDK telemetry, no version checks.
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 ASPIRE_VERSION_CHECK_DISABLED=true

bash eng/install-deps.sh
dotnet test EventPipeline.sln --logger "console;verbosity=normal" "$@"
