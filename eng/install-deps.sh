#!/usr/bin/env bash
# Installs what EventPipeline needs from Debian's packages, once: the brokers (redis-server, rabbitmq-server), Prometheus,
# the Redis exporter and chromium (the observability tests screenshot the Aspire dashboard with it). Safe to run again:
# it installs only what is missing. Needs root (or sudo) and apt.
set -euo pipefail

packages=(redis-server rabbitmq-server prometheus prometheus-redis-exporter chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all present (${packages[*]})"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
  sudo="sudo"
fi

echo "install-deps: installing ${missing[*]}"
# The packages' own services are not needed (EventPipeline runs its own instances on free ports); on machines
# without systemd their start is refused, which is fine.
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
