#!/usr/bin/env python3
"""Checks that what a receiver wrote is what it answered 200 for: every line of ARCHIVE must be
one of the signed bodies in BODIES, byte for byte, and there must be at least ACCEPTED lines
(requests answered 2xx) and at most ACCEPTED + SLACK (requests in flight when the load stopped
are done by the server but not counted by the load generator).
FORMAT "raw": a line is the body. FORMAT "sigsci": a line is sigsci-webhookd's archive record,
{"id":..,"received_at":..,"endpoint":..,<the body's own fields>}; ids must be unique.
Usage: check_archive.py FORMAT BODIES ARCHIVE ACCEPTED SLACK   (prints one line; exit 1 if bad)"""
import json
import sys

fmt, bodies_path, archive_path, accepted, slack = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
bodies = set()
with open(bodies_path, encoding="utf-8") as f:
    for line in f:
        bodies.add(line.rstrip("\n").split(" ", 1)[1])
lines = bad = 0
ids = set()
try:
    archive = open(archive_path, encoding="utf-8")
except FileNotFoundError:
    archive = []
for line in archive:
    lines += 1
    line = line.rstrip("\n")
    if fmt == "raw":
        ok = line in bodies
    else:
        try:
            record = json.loads(line)
            ours = {k: record[k] for k in ("id", "received_at", "endpoint")}
            prefix = json.dumps(ours, separators=(",", ":"))[:-1] + ","
            ok = line.startswith(prefix) and "{" + line[len(prefix):] in bodies and ours["id"] not in ids
            ids.add(ours["id"])
        except (ValueError, KeyError):
            ok = False
    bad += not ok
good = bad == 0 and accepted <= lines <= accepted + slack
print("%s: %d answered 2xx, %d lines written, %d not a sent body" % ("ok" if good else "FAILED", accepted, lines, bad))
sys.exit(0 if good else 1)
