#!/bin/sh
# Installs packages, builds, and runs the daemon on config/example.json (127.0.0.1:8080).
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake --preset dev
cmake --build --preset dev
exec build/dev/sigsci-webhookd --config config/example.json
