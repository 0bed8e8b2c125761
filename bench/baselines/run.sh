#!/usr/bin/env bash
# Runs every Python baseline of issue 16 on this machine, each against its own broker started here (free loopback
# ports, temp directories, stopped by PID at the end), and writes <out>/<label>.jsonl and <out>/<label>.md.
#
#   bench/baselines/run.sh [--out DIR] [--label NAME] [--quick] [--no-celery] [--sink receiver|aiohttp]
#
# Timing runs on a shared machine: wrap it, e.g. `flock -o /work/wt/bench.lock bench/baselines/run.sh`.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=$HERE/results
LABEL=baselines-$(date -u +%Y%m%dT%H%M%SZ)
QUICK=0
CELERY=1
SINK=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --label) LABEL=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --no-celery) CELERY=0; shift ;;
    --sink) SINK=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # the runs happen from $HERE
JSONL=$OUT/$LABEL.jsonl
: > "$JSONL"

# --- Python: a venv over Debian's packages (the registry this machine reaches), pinned in requirements.txt --------
VENV=$HERE/.venv
PY=/usr/bin/python3
NEEDED="import redis, hiredis, pika, aiohttp, celery"
if ! "$PY" -c "$NEEDED" 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-redis python3-hiredis python3-pika python3-aiohttp \
      python3-celery python3-venv >/dev/null
  fi
fi
if ! grep -qs "include-system-site-packages = true" "$VENV/pyvenv.cfg"; then
  rm -rf -- "$VENV" && "$PY" -m venv --system-site-packages "$VENV"
fi
# Offline when the Debian packages are there (it only checks the pins); elsewhere the same versions from PyPI.
"$VENV/bin/pip" install -q --no-index -r "$HERE/requirements.txt" 2>/dev/null \
  || "$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
PY=$VENV/bin/python

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for $what" >&2; return 1; fi
    sleep 0.2
  done
}

PIDS=() GROUPS_TO_KILL=() DIRS=()
cleanup() {
  for g in "${GROUPS_TO_KILL[@]}"; do kill -9 -- "-$g" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for d in "${DIRS[@]}"; do rm -rf -- "$d"; done
}
trap cleanup EXIT

# --- brokers, as tests/EventPipeline.Testing starts them --------------------------------------------------------
REDIS_DIR=$(mktemp -d /tmp/baselines-redis.XXXXXX); DIRS+=("$REDIS_DIR")
REDIS_PORT=$(free_port)
REDIS_PASS=bl-$RANDOM$RANDOM
# AOF with fsync every second, as the AppHost runs Redis for the CPU lane.
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$REDIS_DIR" --daemonize no --appendonly yes \
  --appendfsync everysec --save "" --requirepass "$REDIS_PASS" >"$REDIS_DIR/log" 2>&1 &
PIDS+=($!); REDIS_PID=$!
REDIS_URL="redis://:$REDIS_PASS@127.0.0.1:$REDIS_PORT/0"
wait_for 30 redis-server "$PY" -c "import redis; redis.Redis.from_url('$REDIS_URL').ping()"

RABBIT_DIR=$(mktemp -d /tmp/baselines-rabbit.XXXXXX); DIRS+=("$RABBIT_DIR")
AMQP_PORT=$(free_port); DIST_PORT=$(free_port); EPMD_PORT=$(free_port)
RABBIT_PASS=bl-$RANDOM$RANDOM
mkdir -p "$RABBIT_DIR/home"
echo "loopback_users = none" >"$RABBIT_DIR/rabbitmq.conf"
echo "[]." >"$RABBIT_DIR/enabled_plugins"
epmd -port "$EPMD_PORT" -address 127.0.0.1 >"$RABBIT_DIR/epmd.log" 2>&1 &
PIDS+=($!)
# setsid: the node leads its own process group, so one kill of the group ends it and its helpers;
# RUNNING_UNDER_SYSTEMD makes the script exec the VM, so the PID is the broker's.
HOME=$RABBIT_DIR/home RABBITMQ_NODENAME=baselines-$AMQP_PORT@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
RABBITMQ_NODE_PORT=$AMQP_PORT RABBITMQ_DIST_PORT=$DIST_PORT ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1 \
ERL_FLAGS="-start_epmd false" RABBITMQ_MNESIA_BASE=$RABBIT_DIR/mnesia RABBITMQ_LOG_BASE=$RABBIT_DIR/log \
RABBITMQ_LOGS=- RABBITMQ_CONFIG_FILE=$RABBIT_DIR/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$RABBIT_DIR/enabled_plugins \
RUNNING_UNDER_SYSTEMD=true RABBITMQ_DEFAULT_USER=baselines RABBITMQ_DEFAULT_PASS=$RABBIT_PASS \
RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
  setsid /usr/lib/rabbitmq/bin/rabbitmq-server >"$RABBIT_DIR/node.log" 2>&1 &
GROUPS_TO_KILL+=($!); RABBIT_PID=$!
AMQP_URL="amqp://baselines:$RABBIT_PASS@127.0.0.1:$AMQP_PORT/%2F"
wait_for 120 rabbitmq-server "$PY" -c "import pika; pika.BlockingConnection(pika.URLParameters('$AMQP_URL')).close()"

# --- the webhook sink: the repository's Downstream.Receiver when it is built (the sink the EventPipeline bench
# uses, so both sides pay the same per-request cost on these cores), else the aiohttp sink ---------------------------
SINK_PORT=$(free_port)
RECEIVER_DLL=$REPO/Downstream.Receiver/bin/Release/net10.0/Downstream.Receiver.dll
if [ "$SINK" = auto ]; then
  if [ -f "$RECEIVER_DLL" ] && command -v dotnet >/dev/null; then SINK=receiver; else SINK=aiohttp; fi
fi
if [ "$SINK" = receiver ]; then
  (cd "$(dirname "$RECEIVER_DLL")" && exec env ASPNETCORE_ENVIRONMENT=Production DOTNET_gcServer=0 \
    dotnet "$RECEIVER_DLL" --urls "http://127.0.0.1:$SINK_PORT" --Receiver:DefaultDelayMs=50 \
    --Logging:LogLevel:Default=Warning >"$REDIS_DIR/sink.log" 2>&1) &
else
  "$PY" "$HERE/sink.py" --port "$SINK_PORT" --delay-ms 50 >"$REDIS_DIR/sink.log" 2>&1 &
fi
PIDS+=($!); SINK_PID=$!
SINK_URL=http://127.0.0.1:$SINK_PORT/webhook
wait_for 60 "the webhook sink" "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$SINK_PORT/received')"

# --- the runs ---------------------------------------------------------------------------------------------------
if [ $QUICK = 1 ]; then N_CPU=200 N_NOOP=1000 N_IO=200 CEIL=200; else N_CPU=10000 N_NOOP=10000 N_IO=2000 CEIL=1000; fi
cd "$HERE"
# Whose CPU each baseline counts besides its own processes (common.CpuMeter).
export BASELINE_PIDS="redis=$REDIS_PID,rabbitmq=$RABBIT_PID,sink=$SINK_PID"
note() { echo "== $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2; }
echo "{\"baseline\":\"machine\",\"label\":\"$LABEL\",\"started\":\"$(date -u +%FT%TZ)\",\"uptime\":\"$(uptime)\",\"sink\":\"$SINK\",\"python\":\"$("$PY" -V 2>&1)\"}" >>"$JSONL"

note ceiling before;  "$PY" ceiling.py --calls $CEIL --label before --out "$JSONL"
for mode in prefill burst; do
  note redis cpu $mode;  "$PY" redis_streams.py --redis "$REDIS_URL" --workload cpu  -n $N_CPU  --mode $mode --out "$JSONL"
  note redis noop $mode; "$PY" redis_streams.py --redis "$REDIS_URL" --workload noop -n $N_NOOP --mode $mode --out "$JSONL"
  note redis io $mode;   "$PY" redis_streams.py --redis "$REDIS_URL" --workload io   -n $N_IO   --mode $mode --sink "$SINK_URL" --out "$JSONL"
  note pika noop $mode;  "$PY" pika_queue.py --amqp "$AMQP_URL" -n $N_NOOP --mode $mode --out "$JSONL"
  note pika quorum noop $mode; "$PY" pika_queue.py --amqp "$AMQP_URL" -n $N_NOOP --mode $mode --queue-type quorum --out "$JSONL"
  if [ $CELERY = 1 ]; then
    note celery cpu $mode; "$PY" celery_run.py --redis "$REDIS_URL" -n $N_CPU --mode $mode --out "$JSONL"
  fi
done
note ceiling after;   "$PY" ceiling.py --calls $CEIL --label after --out "$JSONL"

"$PY" report.py "$JSONL" >"$OUT/$LABEL.md"
echo "wrote $OUT/$LABEL.md and $JSONL" >&2
