#!/usr/bin/env python3
"""Writes COUNT distinct signed webhook bodies, one per line: "<signature> <compact JSON body>".
Bodies cycle through tests/data/samples (every activity type, varied sizes), each made unique
with a sequence number. Usage: make_bodies.py KEY COUNT OUT"""
import hashlib
import hmac
import json
import os
import sys

key, count, out = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3]
samples_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "samples")
samples = [json.load(open(os.path.join(samples_dir, n))) for n in sorted(os.listdir(samples_dir)) if n.endswith(".json")]
with open(out, "w") as f:
    for i in range(count):
        envelope = dict(samples[i % len(samples)])
        envelope["bench_seq"] = i
        body = json.dumps(envelope, separators=(",", ":")).encode()
        f.write(hmac.new(key, body, hashlib.sha256).hexdigest() + " " + body.decode() + "\n")
