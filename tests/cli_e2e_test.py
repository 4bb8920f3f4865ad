#!/usr/bin/env python3
"""End-to-end tests of the sigsci-webhookd binary: exit codes, `sign` cross-checked against
`openssl dgst` and Python's hmac module, and the daemon under real signals on 127.0.0.1:0.

Usage: cli_e2e_test.py PATH/TO/sigsci-webhookd
"""
import hashlib
import hmac
import http.client
import json
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import unittest

BINARY = None
HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(HERE, "data", "samples")
SOURCE = os.path.dirname(HERE)


def run(*args, stdin=None):
    return subprocess.run([BINARY, *args], input=stdin, capture_output=True, timeout=60)


class Daemon:
    """The daemon as a child process; its stdout log lines are read on a thread."""

    def __init__(self, config_path):
        self.proc = subprocess.Popen([BINARY, "--config", config_path], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        with self.proc.stdout:
            for raw in self.proc.stdout:
                self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, predicate, timeout=15):
        """Returns the first log record (parsed) for which predicate holds."""
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError("daemon exited; log was:\n" + "\n".join(self.seen))
            self.seen.append(line)
            record = json.loads(line)  # every line must be one JSON object
            if predicate(record):
                return record

    def exit_code(self, timeout=30):
        """Waits for the daemon to exit; if it does not within `timeout` s, kills it and fails
        with its log, so that a hang can be read."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            rest = []
            while (line := self.lines.get(timeout=30)) is not None:
                rest.append(line)
            raise AssertionError("daemon still running %d s later; its log:\n%s"
                                 % (timeout, "\n".join(self.seen + rest))) from None

    def log_so_far(self):
        """Every log line read so far, without waiting for more."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return "\n".join(self.seen)
            if line is None:
                return "\n".join(self.seen)
            self.seen.append(line)

    def read_fifo(self, path, timeout=30):
        """What a command writes into the FIFO at path. Opening a FIFO waits for a writer, so
        the read runs on a thread; if no command opens it within timeout s, the FIFO is opened
        for writing here to release that thread, and the test fails with the daemon's log."""
        result = []

        def reader():
            with open(path) as f:
                result.append(f.read())

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(timeout)
            raise AssertionError("no command opened %s within %d s; the daemon's log:\n%s"
                                 % (path, timeout, self.log_so_far()))
        return result[0]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def post(port, path, body, signature):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-SigSci-Signature"] = signature
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    out = (resp.status, json.loads(resp.read()))
    conn.close()
    return out


def sign(key, body):
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def write_hook_config(d, key, route, handlers):
    """Writes d/k (the key) and d/config.json: one endpoint /hook sending every type to the
    handlers named in `route`, a drain of 300 ms, the spool in d. Returns the config's path."""
    with open(os.path.join(d, "k"), "w") as f:
        f.write(key + "\n")
    config = os.path.join(d, "config.json")
    with open(config, "w") as f:
        json.dump({"listen": ["127.0.0.1:0"], "limits": {"drain_timeout_ms": 300},
                   "endpoints": [{"path": "/hook", "signing_keys": [{"file": "k"}],
                                  "routes": [{"types": ["*"], "handlers": route}]}],
                   "handlers": handlers, "spool": {"path": "spool.db"}}, f)
    return config


class Cli(unittest.TestCase):
    def test_version_exits_0(self):
        r = run("--version")
        self.assertEqual(r.returncode, 0)
        self.assertTrue(r.stdout.decode().startswith("sigsci-webhookd "))

    def test_usage_errors_exit_2(self):
        self.assertEqual(run().returncode, 2)
        self.assertEqual(run("--no-such-flag").returncode, 2)
        self.assertEqual(run("check").returncode, 2)  # --config is required
        self.assertEqual(run("sign").returncode, 2)   # --key-file is required

    def test_check_accepts_the_example_and_summarises_it(self):
        r = run("check", "--config", os.path.join(SOURCE, "config", "example.json"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"endpoint /sigsci/demo", r.stdout)

    def test_check_names_the_key_path_of_an_error_and_exits_1(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "bad.json")
            with open(path, "w") as f:
                f.write('{"listen": ["127.0.0.1:0"], "endpoints": [{"path": "/a", '
                        '"signing_keys": [{"value": "k"}], "routes": [{"types": ["*"], "handlers": ["nope"]}]}]}')
            r = run("check", "--config", path)
            self.assertEqual(r.returncode, 1)
            self.assertIn(path.encode() + b": endpoints[0].routes[0].handlers[0]: no handler named", r.stderr)
            r = run("--config", path)  # the daemon refuses it as a config error
            self.assertEqual(r.returncode, 2)
            self.assertIn(b"endpoints[0].routes[0].handlers[0]", r.stderr)

    def test_sign_matches_openssl_and_python_hmac_for_every_sample(self):
        with tempfile.TemporaryDirectory() as d:
            key = "8f3c1e0a-demo-key"
            key_file = os.path.join(d, "k")
            with open(key_file, "w") as f:
                f.write(key + "\n")  # the trailing newline is not part of the key
            names = sorted(n for n in os.listdir(SAMPLES) if n.endswith(".json"))
            self.assertGreaterEqual(len(names), 32)
            for name in names:
                path = os.path.join(SAMPLES, name)
                with open(path, "rb") as f:
                    body = f.read()
                ours = run("sign", "--key-file", key_file, path)
                self.assertEqual(ours.returncode, 0)
                openssl = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", key, path],
                                         capture_output=True, check=True).stdout.decode().split()[-1]
                self.assertEqual(ours.stdout.decode().strip(), sign(key, body), name)
                self.assertEqual(ours.stdout.decode().strip(), openssl, name)
            piped = run("sign", "--key-file", key_file, stdin=b"hello")
            self.assertEqual(piped.stdout.decode().strip(), sign(key, b"hello"))

    def test_sign_with_missing_key_file_exits_1(self):
        r = run("sign", "--key-file", "/nonexistent/key", stdin=b"x")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"cannot read /nonexistent/key", r.stderr)


class Running(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = lambda name: os.path.join(self.dir.name, name)
        with open(self.path("k1"), "w") as f:
            f.write("first-key\n")
        with open(self.path("k2"), "w") as f:
            f.write("second-key\n")
        self.write_config("k1")
        self.daemon = None

    def tearDown(self):
        if self.daemon:
            self.daemon.stop()
        self.dir.cleanup()

    def write_config(self, key_file, listen="127.0.0.1:0", spool="spool.db"):
        with open(self.path("config.json"), "w") as f:
            f.write("""// written by cli_e2e_test.py
            {"listen": ["%s"], "threads": 2,
             "endpoints": [{"path": "/hook", "signing_keys": [{"file": "%s"}],
                            "routes": [{"types": ["*"], "handlers": ["archive", "audit"]}]}],
             "handlers": {"archive": {"kind": "file", "path": "events.jsonl"},
                          "audit": {"kind": "log"}},
             "spool": {"path": "%s"}}""" % (listen, key_file, spool))

    def start(self):
        self.daemon = Daemon(self.path("config.json"))
        listening = self.daemon.wait_for(lambda r: r["msg"] == "listening")
        self.daemon.wait_for(lambda r: r["msg"] == "ready")
        return int(listening["address"].rsplit(":", 1)[1])

    def test_serves_reloads_on_sighup_and_drains_on_sigterm(self):
        port = self.start()
        with open(os.path.join(SAMPLES, "flag.json"), "rb") as f:
            body = f.read()
        status, answer = post(port, "/hook", body, sign("first-key", body))
        self.assertEqual((status, answer["status"]), (200, "accepted"))
        self.daemon.wait_for(lambda r: r["msg"] == "delivery" and r["handler"] == "archive"
                             and r["event_id"] == answer["id"] and r["status"] == "delivered")

        # Rotate to the second key and reload: the first key stops working.
        self.write_config("k2")
        self.daemon.proc.send_signal(signal.SIGHUP)
        self.daemon.wait_for(lambda r: r["msg"] == "reloaded")
        self.assertEqual(post(port, "/hook", body, sign("first-key", body))[0], 401)
        body2 = body.replace(b'"type"', b'"attempt": 2, "type"', 1)
        status, second = post(port, "/hook", body2, sign("second-key", body2))
        self.assertEqual((status, second["status"]), (200, "accepted"))

        # A broken config on SIGHUP is refused; the running one stays.
        with open(self.path("config.json"), "w") as f:
            f.write("{ not json")
        self.daemon.proc.send_signal(signal.SIGHUP)
        failed = self.daemon.wait_for(lambda r: r["msg"] == "reload failed")
        self.assertIn("not valid JSON", failed["error"])
        body3 = body.replace(b'"type"', b'"attempt": 3, "type"', 1)
        self.assertEqual(post(port, "/hook", body3, sign("second-key", body3))[0], 200)

        self.daemon.proc.send_signal(signal.SIGTERM)
        self.daemon.wait_for(lambda r: r["msg"] == "stopped")
        self.assertEqual(self.daemon.exit_code(), 0)
        with open(self.path("events.jsonl")) as f:
            records = [json.loads(line) for line in f]
        self.assertEqual(len(records), 3)
        self.assertEqual(records[0]["id"], answer["id"])
        self.assertEqual(records[1]["id"], second["id"])
        self.assertEqual(records[0]["payload"], json.loads(body)["payload"])

    def test_keys_never_reach_the_log(self):
        port = self.start()
        body = b'{"type":"flag","payload":{}}'
        post(port, "/hook", body, sign("first-key", body))
        post(port, "/hook", body, sign("wrong", body))
        self.daemon.proc.send_signal(signal.SIGTERM)
        self.daemon.wait_for(lambda r: r["msg"] == "stopped")
        self.assertEqual(self.daemon.exit_code(), 0)
        self.assertFalse(any("first-key" in line for line in self.daemon.seen))

    def test_port_in_use_exits_1(self):
        port = self.start()
        self.write_config("k1", listen="127.0.0.1:%d" % port, spool="second.db")
        r = subprocess.run([BINARY, "--config", self.path("config.json")], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"bind", r.stdout)

    def test_a_second_daemon_on_the_same_spool_exits_1_and_leaves_it_alone(self):
        self.start()
        self.write_config("k1")  # another port (0), the same spool
        r = subprocess.run([BINARY, "--config", self.path("config.json")], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        record = json.loads(r.stdout.decode().splitlines()[-1])
        self.assertEqual(record["msg"], "startup failed")
        self.assertIn("is in use by another sigsci-webhookd (pid %d)" % self.daemon.proc.pid, record["error"])
        self.assertNotIn(b"spool opened", r.stdout)
        # The spool commands do not take the daemon's lock.
        self.assertEqual(run("spool", "stats", "--config", self.path("config.json")).returncode, 0)


class ShippedExample(unittest.TestCase):
    """config/example.json as shipped (both listeners moved to port 0, in a temp dir): the exec
    example runs."""

    def test_flag_event_runs_the_block_ip_example(self):
        import shutil
        with tempfile.TemporaryDirectory() as d:
            for name in ("example.json", "demo.key", "block-ip-example.sh"):
                shutil.copy2(os.path.join(SOURCE, "config", name), d)
            path = os.path.join(d, "example.json")
            with open(path) as f:
                text = f.read().replace('"127.0.0.1:8080"', '"127.0.0.1:0"')
                text = text.replace('"127.0.0.1:9102"', '"127.0.0.1:0"')  # the admin listener
            with open(path, "w") as f:
                f.write(text)
            daemon = Daemon(path)
            try:
                port = int(daemon.wait_for(lambda r: r["msg"] == "listening")["address"].rsplit(":", 1)[1])
                with open(os.path.join(SAMPLES, "flag.json"), "rb") as f:
                    body = f.read()
                with open(os.path.join(d, "demo.key")) as f:
                    key = f.read().rstrip("\n")
                status, answer = post(port, "/sigsci/demo", body, sign(key, body))
                self.assertEqual(status, 200)
                record = daemon.wait_for(lambda r: r["msg"] == "delivery" and r["handler"] == "block-ip")
                self.assertEqual(record["status"], "delivered", record)
                self.assertEqual(record["stdout"], "recorded 198.51.100.23\n")
                with open(os.path.join(d, "flagged-ips.txt")) as f:
                    self.assertEqual(f.read().split()[:2], ["198.51.100.23", answer["id"]])
                daemon.proc.send_signal(signal.SIGTERM)
                self.assertEqual(daemon.exit_code(), 0)
            finally:
                daemon.stop()


class ExecDrain(unittest.TestCase):
    """SIGTERM while a command runs: it gets the drain period, is then terminated, and its
    delivery runs again after a restart."""

    def stop_while_a_command_runs(self, d, before_stop=lambda daemon: None):
        """Starts the daemon on d with a `slow` exec handler, posts one event, waits until its
        command runs, calls before_stop(daemon), sends SIGTERM and checks that the command was
        ended and the daemon exited 0. Returns the config's path, the FIFO and the event id."""
        fifo = os.path.join(d, "started")
        os.mkfifo(fifo)
        config = write_hook_config(d, "drain-key", ["slow"], {
            "slow": {"kind": "exec", "kill_grace_ms": 200,
                     "command": ["/bin/sh", "-c", "echo $SIGSCI_EVENT_ID > %s; exec sleep 60" % fifo]}})
        daemon = Daemon(config)
        try:
            port = int(daemon.wait_for(lambda r: r["msg"] == "listening")["address"].rsplit(":", 1)[1])
            body = b'{"type":"flag","payload":{"source":"192.0.2.1"}}'
            status, answer = post(port, "/hook", body, sign("drain-key", body))
            self.assertEqual(status, 200)
            self.assertEqual(daemon.read_fifo(fifo).strip(), answer["id"])  # the command runs
            before_stop(daemon)
            daemon.proc.send_signal(signal.SIGTERM)
            record = daemon.wait_for(lambda r: r["msg"] == "delivery")
            self.assertEqual(record["status"], "failed")
            self.assertIn("stopped at shutdown", record["error"])
            self.assertEqual(daemon.exit_code(), 0)
        finally:
            daemon.stop()
        return config, fifo, answer["id"]

    def test_running_command_is_ended_after_the_drain_and_retried_after_restart(self):
        with tempfile.TemporaryDirectory() as d:
            config, fifo, event_id = self.stop_while_a_command_runs(d)
            # After a restart the delivery runs again, with the same event id.
            daemon = Daemon(config)
            try:
                self.assertEqual(daemon.read_fifo(fifo).strip(), event_id)
                daemon.proc.send_signal(signal.SIGTERM)
                self.assertEqual(daemon.exit_code(), 0)
            finally:
                daemon.stop()

    def test_a_command_of_a_handler_retired_by_a_reload_is_ended_too(self):
        def reload(daemon):
            # The reload builds new handlers; the one running the command is retired.
            daemon.proc.send_signal(signal.SIGHUP)
            daemon.wait_for(lambda r: r["msg"] == "reloaded")

        with tempfile.TemporaryDirectory() as d:
            self.stop_while_a_command_runs(d, reload)


class HungHandler(unittest.TestCase):
    """A `file` handler whose writes never return (a FIFO nobody reads, like a hung mount): the
    other handler still gets every event, SIGTERM still ends the daemon with 0, and after a
    restart the stuck deliveries run again."""

    def test_other_handlers_deliver_shutdown_is_bounded_and_a_restart_delivers_the_rest(self):
        with tempfile.TemporaryDirectory() as d:
            stuck = os.path.join(d, "stuck.jsonl")
            os.mkfifo(stuck)
            reader = os.open(stuck, os.O_RDONLY | os.O_NONBLOCK)  # held open, not read
            config = write_hook_config(d, "hung-key", ["stuck", "archive"], {
                "stuck": {"kind": "file", "path": "stuck.jsonl"},
                "archive": {"kind": "file", "path": "archive.jsonl"}})
            ids = set()

            def delivered(handler, count):
                seen = [0]

                def predicate(r):
                    if r["msg"] == "delivery" and r["handler"] == handler and r["status"] == "delivered":
                        seen[0] += 1
                    return seen[0] >= count
                return predicate

            daemon = Daemon(config)
            try:
                port = int(daemon.wait_for(lambda r: r["msg"] == "listening")["address"].rsplit(":", 1)[1])
                # 40 events of about 4 KB: more than the 64 KiB a pipe holds.
                for i in range(40):
                    body = json.dumps({"type": "flag", "payload": {"n": i, "pad": "x" * 4000}}).encode()
                    status, answer = post(port, "/hook", body, sign("hung-key", body))
                    self.assertEqual(status, 200)
                    ids.add(answer["id"])
                daemon.wait_for(delivered("archive", 40))
                with open(os.path.join(d, "archive.jsonl")) as f:
                    self.assertEqual({json.loads(line)["id"] for line in f}, ids)
                daemon.proc.send_signal(signal.SIGTERM)
                daemon.wait_for(lambda r: r["msg"] == "a delivery never returned; stopping without it")
                self.assertEqual(daemon.exit_code(), 0)
            finally:
                daemon.stop()
            # What reached the pipe, whole lines only (the blocked write may have left part of one).
            chunks = []
            while True:
                try:
                    chunk = os.read(reader, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            os.close(reader)
            lines = b"".join(chunks).split(b"\n")[:-1]
            through_pipe = {json.loads(line)["id"] for line in lines}
            self.assertLess(len(through_pipe), 40)
            os.remove(stuck)  # a plain file from now on
            daemon = Daemon(config)
            try:
                def complete(r):
                    if r["msg"] != "delivery" or r["handler"] != "stuck":
                        return False
                    # Whole lines only: the daemon may be appending the next batch as we read.
                    with open(stuck) as f:
                        lines = f.read().split("\n")[:-1]
                    return through_pipe | {json.loads(line)["id"] for line in lines} >= ids
                daemon.wait_for(complete)
                daemon.proc.send_signal(signal.SIGTERM)
                self.assertEqual(daemon.exit_code(), 0)
            finally:
                daemon.stop()


    def test_sigterm_is_handled_while_a_reload_hangs_opening_a_file(self):
        with tempfile.TemporaryDirectory() as d:
            config = write_hook_config(d, "hung-key", ["archive"], {
                "archive": {"kind": "file", "path": "archive.jsonl"}})
            daemon = Daemon(config)
            try:
                daemon.wait_for(lambda r: r["msg"] == "ready")
                # The new config adds a file that is a FIFO nobody opens for reading: opening
                # it never returns, like open() on a hung mount.
                os.mkfifo(os.path.join(d, "late.jsonl"))
                write_hook_config(d, "hung-key", ["archive", "late"], {
                    "archive": {"kind": "file", "path": "archive.jsonl"},
                    "late": {"kind": "file", "path": "late.jsonl"}})
                daemon.proc.send_signal(signal.SIGHUP)
                daemon.wait_for(lambda r: r["msg"] == "reloading")
                daemon.proc.send_signal(signal.SIGHUP)
                daemon.wait_for(lambda r: r["msg"] == "a reload is still running; another follows it")
                daemon.proc.send_signal(signal.SIGTERM)
                daemon.wait_for(lambda r: r["msg"] == "stopping")
                daemon.wait_for(lambda r: r["msg"] == "a reload never finished; stopping without it")
                self.assertEqual(daemon.exit_code(), 0)
            finally:
                daemon.stop()


class SpoolCommands(unittest.TestCase):
    """Dead letters from a handler that cannot write, seen and replayed through `spool ...`."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = lambda name: os.path.join(self.dir.name, name)
        with open(self.path("k"), "w") as f:
            f.write("spool-key\n")
        self.write_config("/dev/full")  # every write fails, like a full disk
        self.daemon = None

    def tearDown(self):
        if self.daemon:
            self.daemon.stop()
        self.dir.cleanup()

    def write_config(self, archive):
        with open(self.path("config.json"), "w") as f:
            json.dump({"listen": ["127.0.0.1:0"], "threads": 2,
                       "endpoints": [{"path": "/hook", "signing_keys": [{"file": "k"}],
                                      "routes": [{"types": ["*"], "handlers": ["archive"]}]}],
                       "handlers": {"archive": {"kind": "file", "path": archive}},
                       "spool": {"path": "spool.db",
                                 "retry": {"initial_delay_ms": 5, "max_delay_ms": 20, "max_attempts": 2}}}, f)

    def spool(self, *args):
        r = run("spool", *args[:1], "--config", self.path("config.json"), *args[1:])
        return r.returncode, r.stdout.decode(), r.stderr.decode()

    def test_list_show_retry_and_purge_dead_letters(self):
        self.daemon = Daemon(self.path("config.json"))
        port = int(self.daemon.wait_for(lambda r: r["msg"] == "listening")["address"].rsplit(":", 1)[1])
        ids = {}
        for name in ("flag", "listCreated"):
            with open(os.path.join(SAMPLES, name + ".json"), "rb") as f:
                body = f.read()
            status, answer = post(port, "/hook", body, sign("spool-key", body))
            self.assertEqual(status, 200)
            ids[name] = answer["id"]
        waiting = set(ids.values())  # log lines are consumed as read: wait for the set, in any order
        while waiting:
            record = self.daemon.wait_for(lambda r: r["msg"] == "delivery" and r["status"] == "dead"
                                          and r["event_id"] in waiting)
            waiting.discard(record["event_id"])

        code, out, _ = self.spool("stats")
        self.assertEqual(code, 0)
        self.assertIn("deliveries dead: 2", out)
        self.assertIn('handler "archive": pending 0, delivered 0, dead 2', out)
        code, out, _ = self.spool("list", "--dead")
        rows = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(sorted(r["id"] for r in rows), sorted(ids.values()))
        self.assertTrue(all(r["state"] == "dead" and r["attempts"] == 2 for r in rows))
        self.assertIn("No space left on device", rows[0]["last_error"])
        code, out, _ = self.spool("list", "--dead", "--type", "flag")
        self.assertEqual([json.loads(line)["id"] for line in out.splitlines()], [ids["flag"]])
        code, out, _ = self.spool("show", ids["flag"])
        shown = json.loads(out)
        self.assertEqual(shown["envelope"]["payload"]["source"], "198.51.100.23")
        self.assertEqual(shown["deliveries"][0]["state"], "dead")

        # Fix the handler, reload, replay one event, then all that are left.
        self.write_config(self.path("events.jsonl"))
        self.daemon.proc.send_signal(signal.SIGHUP)
        self.daemon.wait_for(lambda r: r["msg"] == "reloaded")
        code, out, _ = self.spool("retry", ids["flag"])
        self.assertEqual((code, out.strip()), (0, "1 dead deliveries made pending again"))
        self.daemon.wait_for(lambda r: r["msg"] == "delivery" and r["status"] == "delivered"
                             and r["event_id"] == ids["flag"])
        code, out, _ = self.spool("retry", "--all-dead")
        self.assertEqual((code, out.strip()), (0, "1 dead deliveries made pending again"))
        self.daemon.wait_for(lambda r: r["msg"] == "delivery" and r["status"] == "delivered"
                             and r["event_id"] == ids["listCreated"])
        with open(self.path("events.jsonl")) as f:
            self.assertEqual(sorted(json.loads(line)["id"] for line in f), sorted(ids.values()))

        code, out, _ = self.spool("purge", "--before", "2999-01-01")
        self.assertEqual((code, out.split()[0]), (0, "2"))
        code, out, _ = self.spool("stats")
        self.assertIn("events: 0", out)

    def test_usage_and_lookup_errors(self):
        self.assertEqual(self.spool("retry")[0], 2)                       # neither ID nor --all-dead
        self.assertEqual(self.spool("purge", "--before", "yesterday")[0], 2)
        self.assertEqual(run("spool", "stats").returncode, 2)             # no --config or --spool
        code, _, err = self.spool("stats")
        self.assertEqual(code, 1)                                         # no spool file yet
        self.assertIn("does not exist", err)


if __name__ == "__main__":
    BINARY = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
