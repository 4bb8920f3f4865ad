#!/bin/sh
# forward handler figure, on loopback: deliveries per second to nginx answering 204 over
# kept-alive connections (max_concurrent 8), from the first to the last delivery line of a burst
# of signed events, and how many connections carried them. The daemon is pinned to CPU 0; nginx
# and wrk share CPU 1. Usage: bench/forward.sh [EVENTS]   (needs a dev build)
set -eu
cd "$(dirname "$0")/.."
events=${1:-20000}
. bench/lib.sh
command -v nginx >/dev/null || ${SUDO:-} apt-get install -y -qq nginx-light >/dev/null
bench_setup "$events"

cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
    log_format conn '\$connection';
    access_log $work/access.log conn;
    client_body_temp_path $work;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:18090; location / { return 204; } }
}
NGINX
taskset -c 1 nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"
trap 'kill $(cat "$work"/pid 2>/dev/null) 2>/dev/null || true; kill $(cat "$work"/nginx.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

cat > "$work/config.json" <<JSON
{"listen": ["127.0.0.1:18083"], "threads": 1, "log": {"level": "info"},
 "endpoints": [{"path": "/hook", "signing_keys": [{"file": "key"}],
                "routes": [{"types": ["*"], "handlers": ["fwd"]}]}],
 "handlers": {"fwd": {"kind": "forward", "url": "http://127.0.0.1:18090/collector",
                      "sign": {"key": {"file": "key"}}, "max_concurrent": 8}},
 "spool": {"path": "spool.db", "duplicate_window_s": 0}}
JSON
taskset -c 0 "$bin" --config "$work/config.json" > "$work/daemon.log" 2>&1 &
echo $! > "$work/pid"
i=0; until curl -s -o /dev/null http://127.0.0.1:18083/healthz; do i=$((i+1)); [ $i -lt 200 ] || exit 1; sleep 0.05; done

echo "machine: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ)"
taskset -c 1 wrk -t1 -c8 -d120s -s bench/post_many.lua http://127.0.0.1:18083/hook -- "$work/bodies.txt" > /dev/null &
wrk_pid=$!
# Stop the load once EVENTS deliveries are logged (polling: a benchmark, not a test).
until [ "$(grep -c '"msg":"delivery"' "$work/daemon.log")" -ge "$events" ]; do sleep 0.2; done
kill "$wrk_pid" 2>/dev/null || true
rss=$(awk '/VmHWM/{printf "%.1f", $2/1024}' "/proc/$(cat "$work/pid")/status")
connections=$(sort -u "$work/access.log" | wc -l)
python3 - "$work/daemon.log" "$events" "$connections" "$rss" <<'PY'
import json, sys, datetime
lines = [json.loads(l) for l in open(sys.argv[1]) if '"msg":"delivery"' in l]
n = int(sys.argv[2]); lines = lines[:n]
ts = [datetime.datetime.fromisoformat(l["ts"].replace("Z", "+00:00")) for l in lines]
secs = (ts[-1] - ts[0]).total_seconds()
ok = sum(1 for l in lines if l["status"] == "delivered")
ms = sorted(l["duration_ms"] for l in lines)
print("forward to nginx 204: %d deliveries (%d delivered) in %.2f s = %.0f deliveries/s; "
      "attempt p50 %.2f ms, p99 %.2f ms; %s nginx connections in all; peak RSS %s MiB"
      % (len(lines), ok, secs, len(lines) / secs, ms[len(ms) // 2], ms[len(ms) * 99 // 100],
         sys.argv[3], sys.argv[4]))
PY
