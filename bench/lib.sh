# Shared set-up for the bench scripts (sourced from the repository root): checks the dev build,
# installs wrk, makes a work dir that is removed (and its daemon stopped) on exit, and writes
# BODY_COUNT distinct signed bodies to $work/bodies.txt under the key in $work/key. Below it, the
# helpers every script shares: start and stop the daemon, wait for a server, count thread CPU.
bench_setup() {
    bin=${SIGSCI_BIN:-build/dev/sigsci-webhookd}  # SIGSCI_BIN: another build to compare
    [ -x "$bin" ] || { echo "build first: cmake --preset dev && cmake --build --preset dev" >&2; exit 2; }
    command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
    work=$(mktemp -d)
    trap 'kill $(cat "$work"/pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
    printf 'bench-key\n' > "$work/key"
    python3 bench/make_bodies.py bench-key "$1" "$work/bodies.txt"
}

# CPU ticks (utime + stime) of each of PID's threads, summed by thread name: "name ticks" lines.
# The daemon on $work/config.json, pinned to CPU 0 as in bench/run.sh; its pid in $work/pid and
# its log in $work/daemon.log (written afresh at each start).
start_daemon() {
    taskset -c 0 "$bin" --config "$work/config.json" > "$work/daemon.log" 2>&1 &
    echo $! > "$work/pid"
}
wait_for() {  # URL: at most 10 s (a benchmark script may poll; a test may not)
    local i=0
    until curl -s -o /dev/null "$1"; do
        i=$((i + 1)); [ $i -lt 400 ] || { echo "server did not start: $1" >&2; exit 1; }
        sleep 0.025
    done
}
stop_daemon() {
    kill -TERM "$(cat "$work/pid")"; wait "$(cat "$work/pid")" 2>/dev/null || true
}

thread_ticks() {
    for t in /proc/"$1"/task/*; do
        printf '%s %s\n' "$(cat "$t/comm")" "$(awk '{print $14 + $15}' "$t/stat")"
    done | awk '{s[$1] += $2} END {for (n in s) print n, s[n]}' | sort
}

# "name:µs,..." CPU per request of each thread name, from two thread_ticks snapshots (files).
thread_us_per_request() {  # BEFORE AFTER REQUESTS
    join -a 2 -e 0 -o 0,1.2,2.2 "$1" "$2" |
        awk -v n="$3" '{printf "%s%s:%.1f", (NR > 1 ? "," : ""), $1, n ? ($3 - $2) * 10000 / n : 0}'
}

# "busy iowait": CPU 0's shares (per cent) between two `grep '^cpu0 ' /proc/stat` lines (files).
# Idle time while a thread waits for the disk counts as iowait.
cpu0_shares() {  # BEFORE AFTER
    paste -d' ' "$1" "$2" | awk '{
        for (i = 2; i <= 11; i++) { b += $i; a += $(i + 11) }
        t = a - b; idle = ($(5 + 11) - $5) + ($(6 + 11) - $6)
        printf "%.1f %.1f", t ? 100 - 100 * idle / t : 0, t ? 100 * ($(6 + 11) - $6) / t : 0 }'
}
