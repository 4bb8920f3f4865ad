#!/bin/sh
# Accepted events per second with the spool on and off, at 1, 8 and 64 connections, in one run
# on loopback: the daemon (one I/O thread) is pinned to CPU 0, wrk to CPU 1. Each request is a
# distinct signed body (every activity type) so that every 200 is a new stored event; every
# 200 is checked to have reached the file handler. Each line also gives CPU 0's busy and iowait
# shares (iowait: idle while the writer waits for the disk) and the CPU per request of each of
# the daemon's threads, by name (docs/architecture.md). Usage: bench/spool.sh [SECONDS]
set -eu
cd "$(dirname "$0")/.."
duration=${1:-10}
. bench/lib.sh
bench_setup 20000

run() {  # SPOOL_ENABLED CONNECTIONS
    rm -f "$work"/events.jsonl "$work"/spool.db*
    cat > "$work/config.json" <<JSON
{"listen": ["127.0.0.1:18081"], "threads": 1, "log": {"level": "warn"},
 "limits": {"max_pending_events": 1000000},
 "endpoints": [{"path": "/hook", "signing_keys": [{"file": "key"}],
                "routes": [{"types": ["*"], "handlers": ["archive"]}]}],
 "handlers": {"archive": {"kind": "file", "path": "events.jsonl"}},
 "spool": {"enabled": $1, "path": "spool.db", "duplicate_window_s": 0}}
JSON
    start_daemon
    wait_for http://127.0.0.1:18081/healthz
    cpu0=$(awk '{print $14+$15}' "/proc/$(cat "$work/pid")/stat")
    thread_ticks "$(cat "$work/pid")" > "$work/threads.before"
    grep '^cpu0 ' /proc/stat > "$work/cpu0.before"
    line=$(taskset -c 1 wrk -t1 -c"$2" -d"${duration}s" -s bench/post_many.lua http://127.0.0.1:18081/hook -- "$work/bodies.txt" | grep '^RESULT')
    rss=$(awk '/VmHWM/{printf "%.1f", $2/1024}' "/proc/$(cat "$work/pid")/status")
    cpu1=$(awk '{print $14+$15}' "/proc/$(cat "$work/pid")/stat")
    grep '^cpu0 ' /proc/stat > "$work/cpu0.after"
    thread_ticks "$(cat "$work/pid")" > "$work/threads.after"
    stop_daemon
    requests=$(echo "$line" | sed 's/.*requests=\([0-9]*\).*/\1/')
    non2xx=$(echo "$line" | sed 's/.*non2xx=\([0-9]*\).*/\1/')
    archived=$(wc -l < "$work/events.jsonl")
    ok=yes; [ "$archived" -ge $((requests - non2xx)) ] || ok=NO
    cpu=$(echo "$cpu0 $cpu1 $requests" | awk '{printf "%.3f", ($2-$1)/100*1000/$3}')
    threads=$(thread_us_per_request "$work/threads.before" "$work/threads.after" "$requests")
    set -- "$1" "$2" $(cpu0_shares "$work/cpu0.before" "$work/cpu0.after")
    echo "spool=$1 c=$2 $line cpu_s_per_1k=$cpu peak_rss_mib=$rss archived=$archived all_200s_archived=$ok cpu0_busy_pct=$3 cpu0_iowait_pct=$4 thread_us_per_req=$threads"
}

echo "machine: $(nproc) cores, $(uname -r); ${duration}s per run; $(date -u +%Y-%m-%dT%H:%MZ)"
for c in ${CONNECTIONS:-1 8 64}; do
    for spool in ${SPOOL:-false true}; do run "$spool" "$c"; done
done
