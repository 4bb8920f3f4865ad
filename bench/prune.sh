#!/bin/sh
# The spool's pruning: the day after a burst the writer deletes as many events as it stored. A
# load at 64 connections for SECONDS fills the spool (one `file` handler, every event delivered);
# with the daemon stopped, every event's receipt time is moved two days back, past the default
# retention of one day. Then, from a copy of that spool each time, the daemon (pinned to CPU 0)
# is started twice:
#   idle: nothing sent; prints how many events the round deleted, the time from `spool opened` to
#         `spool pruned` in the daemon's log, and the writer thread's CPU over it;
#   load: the same load runs from the start (wrk on CPU 1) while the round prunes; prints wrk's
#         result and its longest request, and how many of the old events are left.
# Usage: bench/prune.sh [SECONDS]
set -eu
cd "$(dirname "$0")/.."
duration=${1:-10}
. bench/lib.sh
bench_setup 20000

config() {  # LEVEL
    cat > "$work/config.json" <<JSON
{"listen": ["127.0.0.1:18081"], "threads": 1, "log": {"level": "$1"},
 "limits": {"max_pending_events": 1000000},
 "endpoints": [{"path": "/hook", "signing_keys": [{"file": "key"}],
                "routes": [{"types": ["*"], "handlers": ["archive"]}]}],
 "handlers": {"archive": {"kind": "file", "path": "events.jsonl"}},
 "spool": {"enabled": true, "path": "spool.db", "duplicate_window_s": 0}}
JSON
}
load() {  # SECONDS
    taskset -c 1 wrk -t1 -c64 -d"$1s" -s bench/post_many.lua http://127.0.0.1:18081/hook -- "$work/bodies.txt"
}
sql() {  # DB SQL: prints the first column of the first row
    python3 -c 'import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
row = db.execute(sys.argv[2]).fetchone()
db.commit()
print(row[0] if row else "")' "$1" "$2"
}

config warn
start_daemon
wait_for http://127.0.0.1:18081/healthz
fill=$(load "$duration" | grep '^RESULT')
stop_daemon
two_days_ms=172800000
sql "$work/spool.db" "UPDATE events SET received_ms = received_ms - $two_days_ms" > /dev/null
old=$(sql "$work/spool.db" "SELECT COUNT(*) FROM events")
sql "$work/spool.db" "PRAGMA wal_checkpoint(TRUNCATE)" > /dev/null
mv "$work/spool.db" "$work/aged.db"
rm -f "$work"/spool.db-* "$work/events.jsonl"
echo "machine: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ); fill: $fill"
echo "aged events: $old"

config info
cp "$work/aged.db" "$work/spool.db"
start_daemon
wait_for http://127.0.0.1:18081/healthz
i=0; until grep -q '"spool pruned"' "$work/daemon.log"; do i=$((i+1)); [ $i -lt 6000 ] || { echo "no round ended within 60 s" >&2; exit 1; }; sleep 0.01; done
ticks=$(thread_ticks "$(cat "$work/pid")" | awk '$1 == "spool-writer" {print $2}')
stop_daemon
python3 - "$work/daemon.log" "$ticks" <<'PY'
import json, sys
from datetime import datetime
records = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
at = lambda msg: next(r for r in records if r["msg"] == msg)
opened, pruned = at("spool opened"), at("spool pruned")
t = lambda r: datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
seconds = t(pruned) - t(opened)
cpu = int(sys.argv[2]) / 100
print(f"idle: pruned={pruned['events']} in_s={seconds:.2f} writer_cpu_s={cpu:.2f} "
      f"writer_us_per_event={cpu * 1e6 / pruned['events']:.1f}")
PY

config warn
rm -f "$work"/spool.db-* "$work/events.jsonl"
cp "$work/aged.db" "$work/spool.db"
start_daemon
wait_for http://127.0.0.1:18081/healthz
out=$(load "$duration")
stop_daemon
longest=$(echo "$out" | awk '$1 == "Latency" {print $4}')
left=$(sql "$work/spool.db" "SELECT COUNT(*) FROM events WHERE received_ms < $(date +%s)000 - 86400000")
echo "load: $(echo "$out" | grep '^RESULT') longest=$longest old_events_left=$left"
