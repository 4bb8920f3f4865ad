#!/bin/bash
# The benchmark of record (docs/performance.md): sigsci-webhookd against its peers, side by side in
# one run, on loopback. Every server is pinned to CPU 0 and wrk to CPU 1, and each run gets a
# fresh server, so peak RSS is that run's own.
#
#   nginx-204        nginx answering 204 to the same POSTs: the ceiling of this setup
#   webhook          adnanh/webhook (Debian's `webhook`): payload-hmac-sha256 on
#                    X-SigSci-Signature, then a command that appends the raw body to a file; it
#                    answers when the command has run (include-command-output-in-response)
#   sigsci-webhookd  verify, validate, store in the spool (group commit, fsync), answer, deliver
#                    to a `file` handler
#   sigsci-forged    sigsci-webhookd answering 401 to bodies with wrong signatures
#   sigsci-nospool   (WITH_SPOOL_OFF=1) sigsci-webhookd with the spool disabled: events held in
#                    memory until delivered, not durable; what the request path costs without
#                    the store
#
# After each sigsci-webhookd run its /metrics (admin port 18091) gives the spool's group commits:
# how many, events per commit, and the buckets of the median and 99th-percentile commit time
# (bench/commit_stats.py). A 200 cannot come sooner than its commit. Then the script waits until
# every accepted event is delivered (the backlog on /metrics is 0) before it stops the daemon
# and checks the archive; the CPU time includes that catching up.
#
# Bodies: BODIES distinct signed bodies made from tests/data/samples (all 32 activity types,
# 125 B to 5 KB). Duplicate detection is off in the sigsci-webhookd config, because wrk sends
# the same bodies again once it has sent them all. After each run the file the receiver wrote is
# checked against what it answered 2xx for (count and content, bench/check_archive.py), so a
# fast wrong answer cannot win.
#
# Then two more tables for sigsci-webhookd alone: cost against concurrency (1 to 1,000
# connections, with idle RSS), and against body size (1 KB to 1 MB).
#
# Usage: bench/run.sh [SECONDS_PER_RUN]   (default 5; installs tools with sudo when not root)
# Environment: SIGSCI_BIN (default: the release build, built here), CONNECTIONS ("1 8 64"),
#              SKIP_SCALING=1 (only the peers table), BODIES (5000), WITH_SPOOL_OFF=1 (the
#              sigsci-nospool row).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-5}
connections=${CONNECTIONS:-1 8 64}
body_count=${BODIES:-5000}

# ---- tools -------------------------------------------------------------------------------------
if [ "$(id -u)" -ne 0 ] && [ -z "${SUDO+set}" ]; then SUDO=sudo; fi
need=""
command -v wrk >/dev/null || need="$need wrk"
command -v nginx >/dev/null || need="$need nginx-light"
command -v webhook >/dev/null || need="$need webhook"
command -v taskset >/dev/null || need="$need util-linux"
command -v curl >/dev/null || need="$need curl"
command -v python3 >/dev/null || need="$need python3"
if [ -n "$need" ]; then
    echo "installing:$need"
    ${SUDO:-} apt-get update -qq
    DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
# The Debian package enables a webhook service of its own; it is not used here.
if [ -z "${SIGSCI_BIN:-}" ]; then
    scripts/install-deps.sh >/dev/null
    cmake --preset release >/dev/null
    cmake --build --preset release -j2 >/dev/null
    bin=build/release/sigsci-webhookd
else
    bin=$SIGSCI_BIN
fi
[ -x "$bin" ] || { echo "no binary at $bin" >&2; exit 2; }
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
server_pid=""
stop_server() {
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap 'stop_server; rm -rf "$work"' EXIT

printf 'bench-key\n' > "$work/key"
python3 bench/make_bodies.py bench-key "$body_count" "$work/bodies.txt"
python3 bench/make_bodies.py bench-key "$body_count" "$work/forged.txt" --forge

# ---- servers -----------------------------------------------------------------------------------
port=18090
admin_port=18091  # sigsci-webhookd's /metrics, read after each of its runs
for p in $port $admin_port; do
    if curl -s -o /dev/null "http://127.0.0.1:$p/"; then
        echo "port $p is already in use: the measurements would reach another server" >&2
        exit 1
    fi
done
. bench/lib.sh  # wait_for

start_nginx() {
    cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work;
    client_max_body_size 2m;
    server { listen 127.0.0.1:$port backlog=4096; location / { return 204; } }
}
NGINX
    taskset -c 0 nginx -c "$work/nginx.conf" -e "$work/nginx-error.log" &
    server_pid=$!
    wait_for "http://127.0.0.1:$port/"
    # The worker does the work; the master only waits.
    measured_pid=$(pgrep -P "$server_pid" | head -1)
    url="http://127.0.0.1:$port/hook"
}

start_webhook() {
    rm -f "$work/webhook.jsonl"
    cat > "$work/append.sh" <<SH
#!/bin/sh
printf '%s\n' "\$1" >> $work/webhook.jsonl
SH
    chmod +x "$work/append.sh"
    cat > "$work/hooks.json" <<JSON
[{"id": "hook", "execute-command": "$work/append.sh",
  "include-command-output-in-response": true,
  "pass-arguments-to-command": [{"source": "raw-request-body"}],
  "trigger-rule": {"match": {"type": "payload-hmac-sha256", "secret": "bench-key",
                             "parameter": {"source": "header", "name": "X-SigSci-Signature"}}}}]
JSON
    taskset -c 0 webhook -hooks "$work/hooks.json" -ip 127.0.0.1 -port "$port" > "$work/webhook.log" 2>&1 &
    server_pid=$!
    wait_for "http://127.0.0.1:$port/"
    measured_pid=$server_pid
    url="http://127.0.0.1:$port/hooks/hook"
}

start_sigsci() {
    rm -f "$work/events.jsonl" "$work"/spool.db*
    cat > "$work/sigsci.json" <<JSON
{"listen": ["127.0.0.1:$port"], "threads": 1, "log": {"level": "warn"},
 "admin": {"listen": ["127.0.0.1:$admin_port"]},
 "limits": {"max_connections_per_ip": 0, "max_pending_events": 1000000},
 "endpoints": [{"path": "/hook", "signing_keys": [{"file": "key"}],
                "routes": [{"types": ["*"], "handlers": ["archive"]}]}],
 "handlers": {"archive": {"kind": "file", "path": "events.jsonl"}},
 "spool": {"enabled": ${spool_enabled:-true}, "path": "spool.db", "duplicate_window_s": 0}}
JSON
    taskset -c 0 "$bin" --config "$work/sigsci.json" > "$work/sigsci.log" 2>&1 &
    server_pid=$!
    wait_for "http://127.0.0.1:$port/healthz"
    measured_pid=$server_pid
    url="http://127.0.0.1:$port/hook"
}

start_sigsci_nospool() {
    spool_enabled=false start_sigsci
}

# ---- one measurement -----------------------------------------------------------------------------
cpu_ticks() {  # utime + stime + children's (webhook's commands are its children)
    awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"
}
rss_mib() {  # FIELD PID
    awk -v f="$1:" '$1 == f {printf "%.1f", $2 / 1024}' "/proc/$2/status"
}

backlog() {  # sigsci-webhookd's deliveries not yet done, from its /metrics
    curl -s "http://127.0.0.1:$admin_port/metrics" | awk '/^sigsci_webhookd_spool_backlog /{print $2}'
}
# After the load, waits (at most 60 s) until every accepted event's delivery is done and prints
# how long that took, so that the CPU time includes catching up. Under a load the delivery
# thread cannot keep up with (it yields the core to the I/O thread and the writer), deliveries
# beyond the 1,024 that run from memory wait in the spool for the poller.
wait_delivered() {
    local start n=0
    start=$(date +%s.%N)
    while [ "$(backlog)" != 0 ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n + 1)); done
    awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }'
}

rows="$work/rows"
: > "$rows"
# NAME START BODIES CONNECTIONS CHECK(raw|sigsci|none|forged) -> a row in $rows
measure() {
    local name=$1 start=$2 bodies=$3 c=$4 check=$5
    $start
    local idle_rss before after line requests non2xx errors rps p50 p99 peak cpu accepted verdict
    idle_rss=$(rss_mib VmRSS "$measured_pid")
    before=$(cpu_ticks "$measured_pid")
    line=$(taskset -c 1 wrk -t1 -c"$c" -d"${duration}s" --timeout 10s -s bench/post_many.lua "$url" -- "$bodies" | grep '^RESULT')
    # The spool's group commits, fsync included: what every 200 waited for.
    local commits=""
    if [ "$check" = sigsci ]; then
        commits=$(curl -s "http://127.0.0.1:$admin_port/metrics" | python3 bench/commit_stats.py)
        commits="$commits; all delivered $(wait_delivered) s after the load"
    fi
    after=$(cpu_ticks "$measured_pid")
    peak=$(rss_mib VmHWM "$measured_pid")
    stop_server
    read -r requests non2xx errors rps p50 p99 <<< "$(echo "$line" | sed 's/[a-z0-9_]*=//g; s/RESULT //')"
    cpu=$(awk -v b="$before" -v a="$after" -v n="$requests" 'BEGIN { printf "%.3f", n ? (a - b) / 100 * 1000 / n : 0 }')
    accepted=$((requests - non2xx))
    case $check in
        raw) verdict=$(python3 bench/check_archive.py raw "$bodies" "$work/webhook.jsonl" "$accepted" "$c") || true ;;
        sigsci) verdict=$(python3 bench/check_archive.py sigsci "$bodies" "$work/events.jsonl" "$accepted" "$c") || true ;;
        forged)
            if [ "$accepted" -eq 0 ] && [ ! -s "$work/events.jsonl" ]; then verdict="ok: all $non2xx refused, nothing written"
            else verdict="FAILED: $accepted forged bodies answered 2xx"; fi ;;
        *) verdict="-" ;;
    esac
    # Errors: socket errors and timeouts, plus any answer other than 2xx (401 when forged).
    local wrong=$non2xx
    [ "$check" = forged ] && wrong=$accepted
    echo "$name $c $rps $p50 $p99 $((errors + wrong)) $peak $idle_rss $cpu $verdict" >> "$rows"
    printf '  %-16s c=%-4s %8s req/s  p50 %7s ms  p99 %8s ms  %s\n' "$name" "$c" "$rps" "$p50" "$p99" "$verdict"
    [ -z "$commits" ] || printf '  %-16s        %s\n' "" "$commits"
}

ratio() {  # NAME_A NAME_B C -> rps(A)/rps(B)
    awk -v a="$1" -v b="$2" -v c="$3" '$1 == a && $2 == c {x = $3} $1 == b && $2 == c {y = $3}
        END { if (x != "" && y > 0) printf "%.2f", x / y; else printf "-" }' "$rows"
}

print_table() {  # TITLE NAMES...
    local title=$1; shift
    echo
    echo "$title"
    printf '| %-16s | %5s | %9s | %8s | %8s | %6s | %13s | %13s | %8s |\n' receiver conns "req/s" "p50 ms" "p99 ms" errors "peak RSS MiB" "CPU s/1k req" "vs nginx"
    printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------------------ -------: ----------: ---------: ---------: -------: --------------: --------------: ---------:
    for name in "$@"; do
        while read -r n c rps p50 p99 errors peak idle cpu verdict; do
            [ "$n" = "$name" ] || continue
            printf '| %-16s | %5s | %9s | %8s | %8s | %6s | %13s | %13s | %8s |\n' "$n" "$c" "$rps" "$p50" "$p99" "$errors" "$peak" "$cpu" "$(ratio "$n" nginx-204 "$c")"
        done < "$rows"
    done
}

echo "$("$bin" --version 2>/dev/null | head -1) ($bin)"
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
echo "peers: $(nginx -v 2>&1 | sed 's/.*: //'), webhook $(webhook -version | awk '{print $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
echo "run: ${duration}s per measurement, $body_count distinct bodies of $(awk '{n++; s += length($0) - 65} END {printf "%.0f", s / n}' "$work/bodies.txt") bytes on average, $(date -u +%Y-%m-%dT%H:%MZ)"
echo

for c in $connections; do
    measure nginx-204 start_nginx "$work/bodies.txt" "$c" none
    measure webhook start_webhook "$work/bodies.txt" "$c" raw
    measure sigsci-webhookd start_sigsci "$work/bodies.txt" "$c" sigsci
    [ -z "${WITH_SPOOL_OFF:-}" ] || measure sigsci-nospool start_sigsci_nospool "$work/bodies.txt" "$c" sigsci
    measure sigsci-forged start_sigsci "$work/forged.txt" "$c" forged
done
print_table "Peers (server on CPU 0, wrk on CPU 1):" nginx-204 webhook sigsci-webhookd sigsci-nospool sigsci-forged
echo
for c in $connections; do
    echo "c=$c: sigsci-webhookd/nginx $(ratio sigsci-webhookd nginx-204 "$c"), sigsci-webhookd/webhook $(ratio sigsci-webhookd webhook "$c"), forged/nginx $(ratio sigsci-forged nginx-204 "$c")"
    [ -z "${WITH_SPOOL_OFF:-}" ] || echo "c=$c: sigsci-nospool/nginx $(ratio sigsci-nospool nginx-204 "$c"), sigsci-nospool/webhook $(ratio sigsci-nospool webhook "$c"), sigsci-webhookd/sigsci-nospool $(ratio sigsci-webhookd sigsci-nospool "$c")"
done

if [ -z "${SKIP_SCALING:-}" ]; then
    echo
    echo "Concurrency (sigsci-webhookd, spool on):"
    for c in 1 8 64 256 1000; do
        measure conc start_sigsci "$work/bodies.txt" "$c" sigsci
    done
    echo
    echo "| conns | req/s | p50 ms | p99 ms | errors | idle RSS MiB | peak RSS MiB | CPU s/1k req |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk '$1 == "conc" {printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $2, $3, $4, $5, $6, $8, $7, $9}' "$rows"

    echo
    echo "Body size (sigsci-webhookd, spool on, 8 connections):"
    for size in 1000 16000 128000 1000000; do
        n=$(( size >= 128000 ? 64 : 2000 ))
        python3 bench/make_bodies.py bench-key "$n" "$work/size-$size.txt" --size "$size"
        measure "size-$size" start_sigsci "$work/size-$size.txt" 8 sigsci
    done
    echo
    echo "| body bytes | req/s | MB/s | p50 ms | p99 ms | peak RSS MiB | CPU s/1k req | CPU µs/KB |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk '$1 ~ /^size-/ {s = substr($1, 6); printf "| %s | %s | %.1f | %s | %s | %s | %s | %.2f |\n", s, $3, $3 * s / 1e6, $4, $5, $7, $9, $9 * 1000 / (s / 1000)}' "$rows"
fi

if grep -q FAILED "$rows"; then
    echo; echo "A check FAILED: see the lines above." >&2
    exit 1
fi
