#!/usr/bin/env python3
"""Crash test: under concurrent signed load the daemon is killed with SIGKILL at random moments
and restarted, several times. Every event that got a 200 must reach the file handler at least
once. Prints the number of lost events (asserted 0) and of duplicates (allowed: at-least-once).

Usage: crash_test.py PATH/TO/sigsci-webhookd     (CRASH_SEED=N to replay a run)
"""
import hashlib
import hmac
import http.client
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROUNDS = 5
CLIENTS = 8
KEY = "crash-key"


def sign(body):
    return hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest()


class Daemon:
    def __init__(self, binary, config):
        self.proc = subprocess.Popen([binary, "--config", config], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self.wait_for(lambda r: r["msg"] == "listening")["address"].rsplit(":", 1)[1])

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8", "replace"))
        self.lines.put(None)

    def wait_for(self, predicate, timeout=60):
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError("daemon exited")
            record = json.loads(line)
            if predicate(record):
                return record


class Load:
    """CLIENTS threads posting unique signed events until the connection breaks."""

    def __init__(self, port, first_seq, round_no):
        self.accepted = []
        self.cond = threading.Condition()
        self.seq = first_seq
        self.threads = [threading.Thread(target=self._client, args=(port, round_no)) for _ in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def _next(self):
        with self.cond:
            self.seq += 1
            return self.seq

    def _client(self, port, round_no):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while True:
                n = self._next()
                body = json.dumps({"created": "2025-03-15T10:17:17Z", "type": "flag",
                                   "payload": {"source": "198.51.100.%d" % (n % 250), "n": n, "round": round_no}}).encode()
                conn.request("POST", "/hook", body=body, headers={"X-SigSci-Signature": sign(body)})
                resp = conn.getresponse()
                answer = json.loads(resp.read())
                if resp.status == 200:
                    with self.cond:
                        self.accepted.append(answer["id"])
                        self.cond.notify_all()
        except (OSError, http.client.HTTPException, ValueError):
            return  # the daemon was killed

    def wait_accepted(self, count):
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.accepted) >= count, timeout=60):
                raise AssertionError("load stalled at %d accepted" % len(self.accepted))

    def join(self):
        for t in self.threads:
            t.join(timeout=60)


def archived_ids(path):
    ids = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                ids.append(json.loads(line)["id"])  # a torn line fails here
    return ids


def main():
    binary = os.path.abspath(sys.argv[1])
    seed = int(os.environ.get("CRASH_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    print("crash test seed: %d (CRASH_SEED=%d to replay)" % (seed, seed))
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "k"), "w") as f:
            f.write(KEY + "\n")
        config = os.path.join(d, "config.json")
        with open(config, "w") as f:
            json.dump({"listen": ["127.0.0.1:0"], "threads": 2, "log": {"level": "info"},
                       "endpoints": [{"path": "/hook", "signing_keys": [{"file": "k"}],
                                      "routes": [{"types": ["*"], "handlers": ["archive"]}]}],
                       "handlers": {"archive": {"kind": "file", "path": "events.jsonl"}},
                       "spool": {"path": "spool.db", "duplicate_window_s": 0}}, f)
        accepted = []
        seq = 0
        for round_no in range(ROUNDS):
            daemon = Daemon(binary, config)
            load = Load(daemon.port, seq, round_no)
            target = rng.randint(50, 600)
            load.wait_accepted(target)
            os.kill(daemon.proc.pid, signal.SIGKILL)
            daemon.proc.wait(timeout=30)
            load.join()
            seq = load.seq + 1
            accepted += load.accepted
            print("round %d: killed after %d accepted (%d in all)" % (round_no, len(load.accepted), len(accepted)))

        # A last run resumes what the killed ones left pending; it is done when every accepted
        # id is in the archive.
        archive = os.path.join(d, "events.jsonl")
        missing = set(accepted) - set(archived_ids(archive))
        print("after the kills: %d accepted events not yet archived" % len(missing))
        daemon = Daemon(binary, config)
        try:
            while missing:
                record = daemon.wait_for(lambda r: r["msg"] == "delivery" and r["status"] == "delivered", timeout=60)
                missing.discard(record["event_id"])
        except queue.Empty:
            pass
        daemon.proc.send_signal(signal.SIGTERM)
        rc = daemon.proc.wait(timeout=60)
        ids = archived_ids(archive)
        lost = set(accepted) - set(ids)
        duplicates = len(ids) - len(set(ids))
        print("accepted: %d, archived lines: %d, lost events: %d, duplicate deliveries: %d"
              % (len(accepted), len(ids), len(lost), duplicates))
        assert rc == 0, "final daemon exited %d" % rc
        assert len(accepted) >= ROUNDS * 50
        assert not lost, "lost events: %s" % sorted(lost)[:10]
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
