#!/usr/bin/env python3
"""The daemon as systemd runs it, without systemd as PID 1: sd_notify against a fake
NOTIFY_SOCKET (READY, RELOADING, STOPPING, STATUS, WATCHDOG), socket activation with real passed
listening sockets (LISTEN_FDS/LISTEN_FDNAMES), credentials from $CREDENTIALS_DIRECTORY, and the
/metrics exposition read back with the Prometheus client library's own text-format parser.

Usage: systemd_test.py PATH/TO/sigsci-webhookd
"""
import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import unittest

from prometheus_client.parser import text_string_to_metric_families

BINARY = None
HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "systemd-test-key"

# Sets LISTEN_PID to the pid that will exec the daemon, as systemd does; the sockets are already
# at descriptors 3, 4, ... (dup2'd in preexec_fn).
EXEC_WITH_LISTEN_PID = ("import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
                        "os.execv(sys.argv[1], sys.argv[1:])")


def sign(body):
    return hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest()


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    out = (resp.status, resp.getheader("Content-Type"), resp.read())
    conn.close()
    return out


class Notifications:
    """A fake $NOTIFY_SOCKET: a datagram socket the daemon reports to."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(15)
        self.seen = []

    def next(self):
        msg = self.sock.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in msg.split("\n") if line)
        self.seen.append(fields)
        return fields

    def wait_for(self, key):
        """Returns the first message carrying `key`; fails after 15 s without one."""
        while True:
            try:
                fields = self.next()
            except socket.timeout:
                raise AssertionError(f"no {key} notification; got {self.seen}")
            if key in fields:
                return fields

    def close(self):
        self.sock.close()


class SystemdTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = lambda name: os.path.join(self.dir.name, name)
        self.proc = None
        self.sockets = []

    def tearDown(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc:
            self.proc.stdout.close()
        for s in self.sockets:
            s.close()
        self.dir.cleanup()

    def write_config(self, listen, admin=None, key_source=None):
        with open(self.path("k"), "w") as f:
            f.write(KEY + "\n")
        config = {
            "listen": listen,
            "threads": 1,
            "endpoints": [{"path": "/sigsci/test",
                           "signing_keys": [key_source or {"file": "k"}],
                           "routes": [{"types": ["*"], "handlers": ["archive"]}]}],
            "handlers": {"archive": {"kind": "file", "path": "events.jsonl"}},
            "spool": {"path": "spool.db"},
        }
        if admin is not None:
            config["admin"] = {"listen": admin}
        with open(self.path("config.json"), "w") as f:
            json.dump(config, f)
        return self.path("config.json")

    def start(self, env, passed=()):
        """Starts the daemon; `passed` sockets become descriptors 3, 4, ..."""
        full_env = {"PATH": "/usr/bin:/bin", **env}
        fds = [s.fileno() for s in passed]

        def place_sockets():
            # Move them out of the way first, in case one already sits on a target number.
            moved = [os.dup(fd) for fd in fds]
            for i, fd in enumerate(moved):
                os.dup2(fd, 3 + i)

        argv = [BINARY, "--config", self.path("config.json")]
        if passed:
            argv = [sys.executable, "-c", EXEC_WITH_LISTEN_PID, *argv]
        self.proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, preexec_fn=place_sockets,
                                     pass_fds=tuple(range(3, 3 + len(fds))) + tuple(fds))

    def listening_socket(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        self.sockets.append(s)
        return s

    def test_ready_reload_and_stop_are_notified(self):
        notify = Notifications(self.dir.name)
        self.addCleanup(notify.close)
        self.write_config(["127.0.0.1:0"])
        self.start({"NOTIFY_SOCKET": notify.path})
        ready = notify.wait_for("READY")
        self.assertEqual(ready["READY"], "1")
        self.assertTrue(ready["STATUS"].startswith("requests 0, deliveries 0, backlog 0"), ready)

        self.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING")
        self.assertEqual(reloading["RELOADING"], "1")
        self.assertGreater(int(reloading["MONOTONIC_USEC"]), 0)
        self.assertEqual(notify.wait_for("READY")["READY"], "1")

        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(notify.wait_for("STOPPING")["STOPPING"], "1")
        self.assertEqual(self.proc.wait(timeout=30), 0)

    def test_ready_comes_only_once_the_listener_answers(self):
        notify = Notifications(self.dir.name)
        self.addCleanup(notify.close)
        passed = self.listening_socket()
        self.write_config(["127.0.0.1:0"])
        self.start({"NOTIFY_SOCKET": notify.path, "LISTEN_FDS": "1"}, passed=[passed])
        notify.wait_for("READY")
        # Right after READY=1, with no retry: the daemon is already accepting and healthy.
        status, _, body = request(passed.getsockname()[1], "GET", "/healthz")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["status"], "ok")

    def test_watchdog_is_petted_while_the_loop_runs_and_not_while_stopped(self):
        notify = Notifications(self.dir.name)
        self.addCleanup(notify.close)
        self.write_config(["127.0.0.1:0"])
        # WatchdogSec=0.2s: WATCHDOG=1 every 100 ms.
        self.start({"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"})
        notify.wait_for("READY")
        for _ in range(3):
            notify.wait_for("WATCHDOG")
        # A process that does not run (as a wedged loop would not) sends nothing.
        self.proc.send_signal(signal.SIGSTOP)
        notify.sock.settimeout(0.05)
        try:  # drain what was sent before the stop took effect
            while True:
                notify.next()
        except socket.timeout:
            pass
        notify.sock.settimeout(1.0)
        with self.assertRaises(socket.timeout):
            notify.next()
        self.proc.send_signal(signal.SIGCONT)
        notify.sock.settimeout(15)
        notify.wait_for("WATCHDOG")

    def test_socket_activation_serves_webhooks_and_metrics_on_passed_sockets(self):
        web = self.listening_socket()
        admin = self.listening_socket()
        # The configured addresses cannot be bound here (TEST-NET-1), so starting at all proves
        # the passed sockets took their place.
        self.write_config(["192.0.2.1:8080"], admin=["192.0.2.1:9102"])
        self.start({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:admin"}, passed=[web, admin])
        with open(os.path.join(HERE, "data", "samples", "flag.json"), "rb") as f:
            body = f.read()
        status, _, answer = request(web.getsockname()[1], "POST", "/sigsci/test", body,
                                    {"X-SigSci-Signature": sign(body)})
        self.assertEqual(status, 200, answer)
        status, _, _ = request(web.getsockname()[1], "POST", "/sigsci/test", body,
                               {"X-SigSci-Signature": "0" * 64})
        self.assertEqual(status, 401)

        status, content_type, text = request(admin.getsockname()[1], "GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertEqual(content_type, "text/plain; version=0.0.4; charset=utf-8")
        samples = {}
        families = {}
        for family in text_string_to_metric_families(text.decode()):
            families[family.name] = family.type
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        self.assertEqual(families["sigsci_webhookd_requests"], "counter")
        self.assertEqual(families["sigsci_webhookd_delivery_duration_seconds"], "histogram")
        self.assertEqual(samples[("sigsci_webhookd_requests_total",
                                  (("endpoint", "/sigsci/test"), ("status", "200")))], 1)
        self.assertEqual(samples[("sigsci_webhookd_signature_failures_total",
                                  (("endpoint", "/sigsci/test"), ("reason", "mismatch")))], 1)
        self.assertEqual(samples[("sigsci_webhookd_events_total",
                                  (("endpoint", "/sigsci/test"), ("type", "flag")))], 1)
        self.assertEqual(samples[("sigsci_webhookd_build_info", (("version", "0.1.0"),))], 1)
        # The webhook socket does not serve metrics.
        self.assertEqual(request(web.getsockname()[1], "GET", "/metrics")[0], 404)

    def test_a_passed_descriptor_that_is_not_a_tcp_listener_is_refused(self):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        self.sockets.append(udp)
        self.write_config(["127.0.0.1:0"])
        self.start({"LISTEN_FDS": "1"}, passed=[udp])
        out = self.proc.communicate(timeout=30)[0].decode()
        self.assertEqual(self.proc.returncode, 1, out)
        self.assertIn("is not a listening TCP socket", out)

    def test_signing_key_from_a_systemd_credential(self):
        creds = self.path("creds")
        os.mkdir(creds)
        with open(os.path.join(creds, "prod.key"), "w") as f:
            f.write(KEY + "\n")
        web = self.listening_socket()
        self.write_config(["127.0.0.1:0"], key_source={"credential": "prod.key"})
        self.start({"CREDENTIALS_DIRECTORY": creds, "LISTEN_FDS": "1"}, passed=[web])
        body = b'{"created":"2026-01-01T00:00:00Z","type":"flag","payload":{}}'
        status, _, answer = request(web.getsockname()[1], "POST", "/sigsci/test", body,
                                    {"X-SigSci-Signature": sign(body)})
        self.assertEqual(status, 200, answer)


if __name__ == "__main__":
    BINARY = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
