#!/bin/bash
# Installs the .deb on a clean Debian 12 booted by systemd-nspawn (systemd as PID 1 in the
# container) and checks the packaged service end to end: it starts (READY), takes a signed
# event on 127.0.0.1:8080 and archives it, its background threads run as such (the unit lets
# them lower themselves), serves /metrics, reloads, passes
# `systemd-analyze verify`, reports its security exposure, and stops.
# Needs root and Debian's package mirror (debootstrap, apt inside the container). Not part of
# the test suite; docs/operations.md and the issue notes quote its output.
# Usage: scripts/check-deb.sh [PATH.deb]
set -euo pipefail
cd "$(dirname "$0")/.."
deb=${1:-$(scripts/package.sh | tail -1)}
base=${SIGSCI_DEB12_ROOT:-/var/tmp/sigsci-debian12}
run=$base.run

apt-get install -y -q debootstrap systemd-container >/dev/null
if [ ! -x "$base/usr/bin/systemctl" ]; then
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl,ca-certificates \
        bookworm "$base" http://deb.debian.org/debian
fi
rm -rf "$run"
cp -a "$base" "$run"   # a clean machine every time
cp "$deb" "$run/root/sigsci-webhookd.deb"

systemd-nspawn -q --register=no --keep-unit -D "$run" --console=pipe -b >"$run.console" 2>&1 &
nspawn=$!
cleanup() { kill "$nspawn" 2>/dev/null || true; wait "$nspawn" 2>/dev/null || true; }
trap cleanup EXIT
leader=""
for _ in $(seq 100); do   # bounded: 20 s for the container's systemd to appear
    leader=$(pgrep -P "$nspawn" -x systemd || true)
    [ -n "$leader" ] && break
    sleep 0.2
done
[ -n "$leader" ] || { echo "container did not boot"; cat "$run.console"; exit 1; }
inside() { nsenter -t "$leader" -a -- "$@"; }
for _ in $(seq 150); do
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    case "$state" in running|degraded) break ;; esac
    sleep 0.2
done
echo "== container: $(inside cat /etc/debian_version), systemd $state"

echo "== apt install ./sigsci-webhookd.deb"
inside apt-get update -q >/dev/null
inside env DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/sigsci-webhookd.deb | tail -3

echo "== service"
inside systemctl is-active sigsci-webhookd.service
inside systemctl show -p Type -p NotifyAccess -p StatusText -p WatchdogUSec sigsci-webhookd.service

echo "== threads: scheduling policy (0 normal, 3 SCHED_BATCH) and nice, as the unit lets them be set"
inside sh -c 'for t in /proc/$(pidof sigsci-webhookd)/task/*; do
    s=$(cat "$t/stat"); set -- ${s##*) }; echo "$(cat "$t/comm") policy=${39} nice=${17}"; done' |
    sort | tee "$run.threads"
grep -q '^sigsci-deliver policy=3 nice=0$' "$run.threads"
grep -q '^spool-checkpt policy=3 nice=10$' "$run.threads"
grep -q '^spool-writer policy=0 nice=0$' "$run.threads"

echo "== signed POST"
sig=$(inside sigsci-webhookd sign --key-file /etc/sigsci-webhookd/prod.key /usr/share/doc/sigsci-webhookd/example-flag.json)
answer=$(inside curl -sS -H "X-SigSci-Signature: $sig" --data-binary @/usr/share/doc/sigsci-webhookd/example-flag.json http://127.0.0.1:8080/sigsci/prod)
echo "$answer"
id=$(echo "$answer" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
for _ in $(seq 50); do
    inside grep -q "$id" /var/log/sigsci-webhookd/events.jsonl 2>/dev/null && break
    sleep 0.1
done
inside grep -c "$id" /var/log/sigsci-webhookd/events.jsonl
forged=$(inside curl -sS -o /dev/null -w '%{http_code}' -H "X-SigSci-Signature: $(printf '0%.0s' $(seq 64))" --data-binary @/usr/share/doc/sigsci-webhookd/example-flag.json http://127.0.0.1:8080/sigsci/prod)
echo "forged signature: $forged"

echo "== /metrics"
inside curl -sS http://127.0.0.1:9102/metrics | grep -E '^sigsci_webhookd_(requests_total|events_total|deliveries_total|spool_backlog)'

echo "== reload"
inside systemctl reload sigsci-webhookd.service
inside systemctl is-active sigsci-webhookd.service
inside journalctl -u sigsci-webhookd -o cat | grep -c '"msg":"reloaded"'

echo "== socket activation"
inside systemctl stop sigsci-webhookd.service
inside systemctl enable --now sigsci-webhookd.socket 2>&1 | tail -1
inside systemctl start sigsci-webhookd.service
inside journalctl -u sigsci-webhookd -o cat | grep -c 'socket activation: using the sockets systemd passed'
sig=$(inside sigsci-webhookd sign --key-file /etc/sigsci-webhookd/prod.key /usr/share/doc/sigsci-webhookd/example-flag.json)
inside curl -sS -H "X-SigSci-Signature: $sig" --data-binary @/usr/share/doc/sigsci-webhookd/example-flag.json http://127.0.0.1:8080/sigsci/prod
echo

echo "== systemd-analyze verify (man-db installed so Documentation= is checked too)"
inside env DEBIAN_FRONTEND=noninteractive apt-get install -y -q man-db >/dev/null 2>&1
inside systemd-analyze verify sigsci-webhookd.service sigsci-webhookd.socket
echo "verify: ok"
echo "== systemd-analyze security"
inside systemd-analyze security sigsci-webhookd.service | tail -1

echo "== stop"
inside systemctl stop sigsci-webhookd.service
inside journalctl -u sigsci-webhookd -o cat | grep -E '"msg":"(stopping|stopped)"' | tail -2
echo "== ok"
