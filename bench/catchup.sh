#!/bin/sh
# How fast a backlog in the spool is delivered: the poller's path (retries, a restart, events
# beyond the 1,024 deliveries that run from memory). A load at 64 connections for SECONDS fills
# the spool; then, with the daemon stopped, every handler's progress mark is set back to 0, so
# that on the next start every stored event's delivery is pending, as if the previous run had
# been killed before delivering any of them. The archive is emptied, the daemon started again
# (pinned to CPU 0), and the script waits until every event is in the archive once more. It
# prints the time from the start to the last line, the rate, and the daemon's CPU over that
# time (start-up included), per thread. Usage: bench/catchup.sh [SECONDS]
set -eu
cd "$(dirname "$0")/.."
duration=${1:-3}
. bench/lib.sh
bench_setup 5000

cat > "$work/config.json" <<JSON
{"listen": ["127.0.0.1:18081"], "threads": 1, "log": {"level": "warn"},
 "limits": {"max_connections_per_ip": 0, "max_pending_events": 1000000},
 "endpoints": [{"path": "/hook", "signing_keys": [{"file": "key"}],
                "routes": [{"types": ["*"], "handlers": ["archive"]}]}],
 "handlers": {"archive": {"kind": "file", "path": "events.jsonl"}},
 "spool": {"enabled": true, "path": "spool.db", "duplicate_window_s": 0}}
JSON

start_daemon
wait_for http://127.0.0.1:18081/healthz
line=$(taskset -c 1 wrk -t1 -c64 -d"${duration}s" -s bench/post_many.lua http://127.0.0.1:18081/hook -- "$work/bodies.txt" | grep '^RESULT')
stop_daemon
events=$(python3 - "$work/spool.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("UPDATE progress SET done_below = 0")
db.commit()
print(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
PY
)
: > "$work/events.jsonl"

started=$(date +%s.%N)
start_daemon
i=0
while [ "$(wc -l < "$work/events.jsonl")" -lt "$events" ]; do
    i=$((i+1)); [ $i -lt 12000 ] || { echo "not all delivered within 120 s" >&2; exit 1; }
    sleep 0.01
done
finished=$(date +%s.%N)
thread_ticks "$(cat "$work/pid")" > "$work/threads.after"
cpu=$(awk '{printf "%.2f", ($14+$15)/100}' "/proc/$(cat "$work/pid")/stat")
stop_daemon
echo "machine: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ); load: $line"
echo "$events" "$started" "$finished" "$cpu" | awk '{
    t = $3 - $2
    printf "backlog=%d delivered_in_s=%.2f per_s=%.0f cpu_s=%.2f cpu_us_per_delivery=%.1f\n",
           $1, t, $1 / t, $4, $4 * 1e6 / $1 }'
: > "$work/threads.before"
echo "thread_us_per_delivery=$(thread_us_per_request "$work/threads.before" "$work/threads.after" "$events")"
