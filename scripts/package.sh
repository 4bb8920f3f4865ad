#!/bin/sh
# Builds the Debian package: a Release build installed under /usr, packed by `cpack -G DEB`.
# Prints the path of the .deb. Needs dpkg-dev (dpkg-shlibdeps computes the library dependencies).
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if ! command -v dpkg-shlibdeps >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y -q dpkg-dev; else sudo apt-get install -y -q dpkg-dev; fi
fi
cmake --preset release -DCMAKE_INSTALL_PREFIX=/usr >/dev/null
cmake --build --preset release
(cd build/release && cpack -G DEB >/dev/null)
ls "$PWD"/build/release/sigsci-webhookd_*.deb
