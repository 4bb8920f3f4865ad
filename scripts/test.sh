#!/bin/sh
# The whole test run, as CI does it: install packages, check formatting, then build and run
# every test three times: the `ci` preset (warnings are errors), the `asan` preset
# (AddressSanitizer + UndefinedBehaviorSanitizer) and the `tsan` preset (ThreadSanitizer).
set -eu
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== clang-format"
# shellcheck disable=SC2046 # file names have no spaces
clang-format --dry-run -Werror $(git ls-files '*.cpp' '*.hpp')

for preset in ci asan tsan; do
    echo "== $preset"
    cmake --preset "$preset"
    cmake --build --preset "$preset"
    ctest --preset "$preset"
done
