#!/bin/sh
# A first throughput figure, on loopback: nginx answering 204 (the ceiling of this setup) and
# sigsci-webhookd verifying, parsing, spooling and archiving the same signed POSTs, in one run
# (duplicate detection off: it is the same body every time). Servers
# are pinned to CPU 0 with one worker thread; wrk runs on CPU 1. Checks that every 200 reached
# the archive file. Usage: bench/quick.sh [SECONDS] [CONNECTIONS]   (needs a dev build)
set -eu
cd "$(dirname "$0")/.."
duration=${1:-10}
conns=${2:-64}
bin=build/dev/sigsci-webhookd
[ -x "$bin" ] || { echo "build first: cmake --preset dev && cmake --build --preset dev" >&2; exit 2; }
for tool in wrk nginx taskset; do
    command -v "$tool" >/dev/null || { echo "installing wrk and nginx-light"; scripts/install-deps.sh >/dev/null
        ${SUDO:-} apt-get install -y -qq wrk nginx-light >/dev/null; break; }
done

work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
body=tests/data/samples/flag.json
printf 'bench-key\n' > "$work/key"
sig=$("$bin" sign --key-file "$work/key" "$body")

cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work;
    server { listen 127.0.0.1:18080; location / { return 204; } }
}
NGINX
cat > "$work/sigsci.json" <<JSON
{"listen": ["127.0.0.1:18081"], "threads": 1, "log": {"level": "warn"},
 "endpoints": [{"path": "/hook", "signing_keys": [{"file": "key"}],
                "routes": [{"types": ["*"], "handlers": ["archive"]}]}],
 "handlers": {"archive": {"kind": "file", "path": "events.jsonl"}},
 "spool": {"path": "spool.db", "duplicate_window_s": 0}}
JSON

taskset -c 0 nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"
taskset -c 0 "$bin" --config "$work/sigsci.json" > "$work/sigsci.log" 2>&1 &
echo $! > "$work/sigsci.pid"
# Wait for both listeners (a benchmark script, not a test: polling is fine here).
for port in 18080 18081; do
    i=0; until curl -s -o /dev/null "http://127.0.0.1:$port/healthz"; do i=$((i+1)); [ $i -lt 100 ] || exit 1; sleep 0.05; done
done

cpu_seconds() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
measure() {  # NAME URL PID
    before=$(cpu_seconds "$3")
    out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" -s bench/post.lua "$2" -- "$body" "$sig")
    after=$(cpu_seconds "$3")
    line=$(echo "$out" | grep '^RESULT')
    requests=$(echo "$line" | sed 's/.*requests=\([0-9]*\).*/\1/')
    rss=$(awk '/VmHWM/{print $2/1024}' "/proc/$3/status")
    cpu=$(echo "$before $after $requests" | awk '{printf "%.3f", ($2-$1)*1000/$3}')
    echo "$1 $line peak_rss_mib=$rss cpu_s_per_1k=$cpu"
}
nginx_pid=$(cat "$work/nginx.pid")
nginx_worker=$(pgrep -P "$nginx_pid" | head -1)
echo "machine: $(nproc) cores, $(uname -r); body $(wc -c < $body) bytes; $conns connections; ${duration}s each"
measure nginx-204 http://127.0.0.1:18080/hook "$nginx_worker" | tee "$work/nginx.out"
measure sigsci-webhookd http://127.0.0.1:18081/hook "$(cat "$work/sigsci.pid")" | tee "$work/sigsci.out"

kill -TERM "$(cat "$work/sigsci.pid")"; wait "$(cat "$work/sigsci.pid")" 2>/dev/null || true
accepted=$(sed 's/.*requests=\([0-9]*\) non2xx=\([0-9]*\).*/\1 \2/' "$work/sigsci.out" | awk '{print $1-$2}')
archived=$(wc -l < "$work/events.jsonl")
bad=$(grep -vc '"type":"flag"' "$work/events.jsonl" || true)
echo "check: $accepted answered 200, $archived lines archived, $bad malformed"
awk -v a="$(sed 's/.*rps=\([0-9]*\).*/\1/' "$work/sigsci.out")" -v n="$(sed 's/.*rps=\([0-9]*\).*/\1/' "$work/nginx.out")" \
    'BEGIN { printf "ratio sigsci/nginx: %.2f\n", a / n }'
[ "$accepted" -le "$archived" ] && [ "$bad" -eq 0 ]
