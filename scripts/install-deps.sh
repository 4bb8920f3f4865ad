#!/bin/sh
# Installs the Debian 12 packages sigsci-webhookd needs to build, test and run. Idempotent:
# nothing is downloaded when everything is already installed. Re-runs itself with sudo when
# not root.
set -eu

packages="g++ cmake ninja-build ccache pkg-config clang-format git
libboost1.81-dev libssl-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev
libgtest-dev libgmock-dev libbenchmark-dev libsqlite3-dev libsystemd-dev libsimdjson-dev
python3 python3-prometheus-client openssl curl"

if [ "$(id -u)" -ne 0 ]; then
    exec sudo "$0" "$@"
fi

missing=""
for p in $packages; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
    echo "install-deps: installing:$missing"
    apt-get update -qq
    # shellcheck disable=SC2086 # the list is meant to split into words
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
else
    echo "install-deps: all packages present"
fi
