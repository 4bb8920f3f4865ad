#!/bin/sh
# Builds the libFuzzer targets (clang, ASan+UBSan), seeds a corpus for each from the samples and
# configs, and runs each for SECONDS (default 60) with a 5 s per-input timeout. New crashing
# inputs land in build/fuzz/artifacts/TARGET/; copy them to fuzz/regressions/TARGET/ once fixed.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]   (TARGET: envelope signature config request)
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-envelope signature config request}
command -v clang++ >/dev/null || ${SUDO:-} apt-get install -y -q clang libclang-rt-14-dev >/dev/null
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
out=build/fuzz
for t in $targets; do
    corpus=$out/corpus/$t
    mkdir -p "$corpus" "$out/artifacts/$t"
    python3 - "$t" "$corpus" <<'PY'
import hashlib, hmac, os, sys
target, corpus = sys.argv[1], sys.argv[2]
samples = "tests/data/samples"
bodies = [open(os.path.join(samples, n), "rb").read() for n in sorted(os.listdir(samples)) if n.endswith(".json")]
def put(data):
    with open(os.path.join(corpus, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)
if target == "envelope":
    for b in bodies: put(b)
elif target == "signature":
    for b in bodies: put(hmac.new(b"fuzz-key-one", b, hashlib.sha256).hexdigest().encode() + b"\0" + b)
elif target == "config":
    for n in ("config/example.json", "config/sigsci-webhookd.json"): put(open(n, "rb").read())
elif target == "request":
    for b in bodies:
        for path in (b"/hook", b"/windowed"):
            put(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nX-SigSci-Signature: fuzz\r\nContent-Length: "
                + str(len(b)).encode() + b"\r\n\r\n" + b)
    put(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n")
    put(b"POST /hook HTTP/1.1\r\nX-SigSci-Signature: fuzz\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n")
PY
    echo "== $t: ${seconds}s"
    ASAN_OPTIONS=detect_leaks=1 "$out/fuzz/${t}_fuzz" "$corpus" fuzz/regressions/$t \
        -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$out/artifacts/$t/" 2>&1 | grep -E "^#[0-9]+ +DONE|stat::number_of_executed_units|stat::average_exec_per_sec|cov:|ERROR|SUMMARY" | tail -5
done
