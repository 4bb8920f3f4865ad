#!/bin/sh
# exec handler figures, on loopback: (1) deliveries per second of /bin/true (max_concurrent 8),
# from the first to the last delivery line of a burst of signed events; (2) the daemon's RSS while
# 64 commands (/bin/sleep) run at once. Usage: bench/exec.sh [EVENTS]   (needs a dev build)
set -eu
cd "$(dirname "$0")/.."
events=${1:-5000}
. bench/lib.sh
bench_setup "$events"

start_exec_daemon() {  # COMMAND_JSON MAX_CONCURRENT: unpinned, unlike lib.sh's start_daemon
    cat > "$work/config.json" <<JSON
{"listen": ["127.0.0.1:18082"], "threads": 1, "log": {"level": "info"},
 "endpoints": [{"path": "/hook", "signing_keys": [{"file": "key"}],
                "routes": [{"types": ["*"], "handlers": ["run"]}]}],
 "handlers": {"run": {"kind": "exec", "command": $1, "max_concurrent": $2, "timeout_ms": 60000}},
 "spool": {"path": "spool.db", "duplicate_window_s": 0}}
JSON
    rm -f "$work"/spool.db*
    "$bin" --config "$work/config.json" > "$work/daemon.log" 2>&1 &
    echo $! > "$work/pid"
    wait_for http://127.0.0.1:18082/healthz
}
post() {  # N: posts the first N bodies, one connection
    head -n "$1" "$work/bodies.txt" | while read -r sig body; do
        printf '%s' "$body" | curl -s -o /dev/null -H "X-SigSci-Signature: $sig" --data-binary @- http://127.0.0.1:18082/hook
    done
}

echo "machine: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ)"
start_exec_daemon '["/bin/true"]' 8
taskset -c 1 wrk -t1 -c8 -d60s -s bench/post_many.lua http://127.0.0.1:18082/hook -- "$work/bodies.txt" > /dev/null &
wrk_pid=$!
# Stop the load once EVENTS deliveries are logged (polling: a benchmark, not a test).
until [ "$(grep -c '"msg":"delivery"' "$work/daemon.log")" -ge "$events" ]; do sleep 0.2; done
kill "$wrk_pid" 2>/dev/null || true
python3 - "$work/daemon.log" "$events" <<'PY'
import json, sys, datetime
lines = [json.loads(l) for l in open(sys.argv[1]) if '"msg":"delivery"' in l]
n = int(sys.argv[2]); lines = lines[:n]
ts = [datetime.datetime.fromisoformat(l["ts"].replace("Z", "+00:00")) for l in lines]
secs = (ts[-1] - ts[0]).total_seconds()
ok = sum(1 for l in lines if l["status"] == "delivered")
print("exec /bin/true: %d deliveries (%d delivered) in %.2f s = %.0f deliveries/s" % (len(lines), ok, secs, len(lines) / secs))
PY
stop_daemon

start_exec_daemon '["/bin/sleep", "30"]' 64
idle=$(awk '/VmRSS/{print $2}' "/proc/$(cat "$work/pid")/status")
post 64
until [ "$(pgrep -c -P "$(cat "$work/pid")" sleep || true)" -ge 64 ]; do sleep 0.1; done
rss=$(awk '/VmRSS/{print $2}' "/proc/$(cat "$work/pid")/status")
fds=$(ls "/proc/$(cat "$work/pid")/fd" | wc -l)
echo "64 commands running: daemon RSS $((rss / 1024)) MiB (idle $((idle / 1024)) MiB), $fds open fds, $(pgrep -c -P "$(cat "$work/pid")") children"
stop_daemon
