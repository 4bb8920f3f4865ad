#!/usr/bin/env python3
"""Writes COUNT distinct signed webhook bodies, one per line: "<signature> <compact JSON body>".
Bodies cycle through tests/data/samples (every activity type, varied sizes), each made unique
with a sequence number. With --size BYTES, each body is padded to about that size with a list of
addresses, as a large list update would carry.
Usage: make_bodies.py KEY COUNT OUT [--size BYTES] [--forge]
--forge writes a wrong signature (of the right length) for each body."""
import hashlib
import hmac
import json
import os
import sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
key, count, out = args[0].encode(), int(args[1]), args[2]
size = int(sys.argv[sys.argv.index("--size") + 1]) if "--size" in sys.argv else 0
if size:
    args.remove(str(size))
forge = "--forge" in sys.argv
samples_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "samples")
samples = [json.load(open(os.path.join(samples_dir, n))) for n in sorted(os.listdir(samples_dir)) if n.endswith(".json")]
if size:  # only the samples that padding can bring to the size
    samples = [s for s in samples if len(json.dumps(s, separators=(",", ":"))) + 40 < size]
with open(out, "w") as f:
    for i in range(count):
        envelope = dict(samples[i % len(samples)])
        envelope["bench_seq"] = i
        body = json.dumps(envelope, separators=(",", ":"))
        if size > len(body):
            # Each entry is 14 to 18 bytes; stop at the first that reaches the size.
            need, pad = size - len(body) - len(',"bench_entries":[]'), []
            n = 0
            while need > 0:
                entry = '"198.51.%d.%d"' % (n // 256 % 256, n % 256)
                need -= len(entry) + 1
                pad.append(entry)
                n += 1
            body = body[:-1] + ',"bench_entries":[' + ",".join(pad) + "]}"
        signature = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
        if forge:
            signature = hmac.new(b"not-" + key, body.encode(), hashlib.sha256).hexdigest()
        f.write(signature + " " + body + "\n")
