# Shared set-up for the bench scripts (sourced from the repository root): checks the dev build,
# installs wrk, makes a work dir that is removed (and its daemon stopped) on exit, and writes
# BODY_COUNT distinct signed bodies to $work/bodies.txt under the key in $work/key.
bench_setup() {
    bin=${SIGSCI_BIN:-build/dev/sigsci-webhookd}  # SIGSCI_BIN: another build to compare
    [ -x "$bin" ] || { echo "build first: cmake --preset dev && cmake --build --preset dev" >&2; exit 2; }
    command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
    work=$(mktemp -d)
    trap 'kill $(cat "$work"/pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
    printf 'bench-key\n' > "$work/key"
    python3 bench/make_bodies.py bench-key "$1" "$work/bodies.txt"
}
