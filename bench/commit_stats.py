#!/usr/bin/env python3
"""Summarises the spool's group commits from a /metrics exposition read on stdin: the bucket
bounds within which the median, 99th and 99.9th percentile commit fell, how many took longer
than 10 ms, and events per commit.
Usage: curl -s http://127.0.0.1:PORT/metrics | bench/commit_stats.py"""
import re
import sys

buckets = []  # (upper bound in seconds, cumulative count)
count = events = 0
for line in sys.stdin:
    m = re.match(r'sigsci_webhookd_spool_commit_duration_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
    if m:
        buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
    elif line.startswith("sigsci_webhookd_spool_commit_duration_seconds_count "):
        count = float(line.split()[1])
    elif line.startswith("sigsci_webhookd_spool_committed_events_total "):
        events = float(line.split()[1])


def quantile(q):
    for bound, cumulative in buckets:
        if cumulative >= q * count:
            return "<=%g ms" % (bound * 1000) if bound != float("inf") else ">5000 ms"
    return "?"


if count == 0:
    print("commits: none")
else:
    over = count - next((c for b, c in buckets if b == 0.01), count)  # slower than 10 ms
    print("commits: %d, %.1f events each, p50 %s, p99 %s, p99.9 %s, %d over 10 ms" % (
        count, events / count, quantile(0.5), quantile(0.99), quantile(0.999), over))
