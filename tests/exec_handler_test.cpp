#include "sigsci/exec_handler.hpp"

#include <gtest/gtest.h>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>
#include <future>
#include <optional>
#include <set>
#include <thread>

#include "sigsci/config.hpp"
#include "sigsci/threads.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

EventPtr flag_event() {
    auto env = parse_envelope(test::sample("flag"));
    return make_event("/sigsci/prod", test::sample("flag"), std::move(env).value(),
                      std::chrono::system_clock::now());
}

ExecConfig sh(const std::string& script) {
    ExecConfig c;
    c.command = {"/bin/sh", "-c", script};
    c.timeout = std::chrono::seconds(20);
    return c;
}

// Runs one delivery and waits for its outcome (bounded, so a hang fails instead of hanging).
DeliveryOutcome run(const std::shared_ptr<ExecHandler>& h, const EventPtr& e = flag_event()) {
    auto promise = std::make_shared<std::promise<DeliveryOutcome>>();
    auto future = promise->get_future();
    h->deliver(e, [promise](DeliveryOutcome o) { promise->set_value(std::move(o)); });
    if (future.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
        ADD_FAILURE() << "delivery did not finish";
        return {false, "hung", Json::object()};
    }
    return future.get();
}

std::shared_ptr<ExecHandler> handler(ExecConfig c) {
    return std::make_shared<ExecHandler>("run", std::move(c));
}

std::set<std::string> open_fds() {
    std::set<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd"))
        out.insert(e.path().filename());
    return out;
}

// Our children, alive or zombie: every /proc entry whose parent is this process.
std::vector<int> children() {
    std::vector<int> out;
    for (const auto& e : std::filesystem::directory_iterator("/proc")) {
        const auto name = e.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::string stat;
        try {
            stat = test::read_file(e.path() / "stat");
        } catch (const std::exception&) {
            continue;  // gone meanwhile
        }
        const auto close = stat.rfind(')');
        int ppid = 0;
        char state = 0;
        if (std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) == 2 &&
            ppid == ::getpid()) {
            out.push_back(std::stoi(name));
        }
    }
    return out;
}

class ExecTest : public ::testing::Test {
  protected:
    void SetUp() override {
        // One delivery first: the process reactor makes its epoll, eventfd and timerfd lazily, and
        // they stay for the life of the process.
        ASSERT_TRUE(run(handler(sh("true"))).ok);
        fds_before = open_fds();
    }
    void TearDown() override {
        // Every child was reaped and the handler left no descriptor open.
        EXPECT_TRUE(children().empty()) << "a child of the test process is left (zombie or alive)";
        EXPECT_EQ(open_fds(), fds_before);
    }
    test::TempDir dir;
    std::set<std::string> fds_before;
};

TEST_F(ExecTest, StdinCarriesTheRawEnvelopeThenEof) {
    const auto out = dir / "stdin";
    const auto o = run(handler(sh("cat > " + out.string())));
    ASSERT_TRUE(o.ok) << o.error;
    EXPECT_EQ(test::read_file(out),
              test::sample("flag"));  // byte for byte, pretty-printing and all
    EXPECT_EQ(o.details["exit_code"], 0);
}

// Deliveries run on background threads (SCHED_BATCH, threads.hpp), whose children would
// inherit that policy: the command is started by the handler's reactor thread instead, and
// runs with the usual one. /proc/PID/stat's 41st field is the policy (0: SCHED_OTHER).
TEST_F(ExecTest, TheCommandRunsWithTheUsualSchedulingWhenDeliveredFromABackgroundThread) {
    const auto h = handler(sh("cut -d' ' -f41 /proc/$$/stat"));
    DeliveryOutcome o;
    std::thread([&] {
        ASSERT_TRUE(run_as_background());
        o = run(h);
    }).join();
    ASSERT_TRUE(o.ok) << o.error;
    EXPECT_EQ(o.details["stdout"], "0\n");
}

TEST_F(ExecTest, EnvironmentIsCleanPlusTheEventAndTheHandlersEnv) {
    ::setenv("SIGSCI_TEST_SHOULD_NOT_LEAK", "1", 1);
    ExecConfig c;
    c.command = {"/usr/bin/env"};
    c.env = {{"TEAM", "secops"}, {"LANG", "en_US.UTF-8"}};
    auto e = flag_event();
    const auto o = run(handler(c), e);
    ::unsetenv("SIGSCI_TEST_SHOULD_NOT_LEAK");
    ASSERT_TRUE(o.ok) << o.error;
    std::set<std::string> lines;
    std::istringstream in(o.details["stdout"].get<std::string>());
    for (std::string l; std::getline(in, l);) lines.insert(l);
    const std::set<std::string> expected = {
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG=en_US.UTF-8",  // the handler's env wins
        "TEAM=secops",
        "SIGSCI_EVENT_ID=" + e->id,
        "SIGSCI_TYPE=flag",
        "SIGSCI_CREATED=2025-03-15T10:17:17.204417893Z",
        "SIGSCI_LINK=https://dashboard.signalsciences.net/corps/examplecorp/sites/www.example.com/"
        "events/65f3a1c2b7e4d90012a3b4c5",
        "SIGSCI_ENDPOINT=/sigsci/prod",
    };
    EXPECT_EQ(lines, expected);
}

TEST_F(ExecTest, ArgvTemplatesTakeStringsAsIsAndOtherValuesAsCompactJson) {
    ExecConfig c;
    c.command = {"/bin/echo", "{/payload/source}", "{/payload/reasons}", "{/payload/requestCount}",
                 "literal {/x}"};
    const auto o = run(handler(c));
    ASSERT_TRUE(o.ok) << o.error;
    EXPECT_EQ(o.details["stdout"], "198.51.100.23 {\"SQLI\":112,\"XSS\":3} 131 literal {/x}\n");
}

TEST_F(ExecTest, MissingPointerFailsWithoutRunningTheCommand) {
    const auto marker = dir / "ran";
    ExecConfig c = sh("touch " + marker.string());
    c.command.push_back("{/payload/nope}");
    const auto o = run(handler(c));
    EXPECT_FALSE(o.ok);
    EXPECT_EQ(o.error, "command[3]: /payload/nope is not in the event; the command was not run");
    EXPECT_FALSE(std::filesystem::exists(marker));
}

TEST_F(ExecTest, NonZeroExitFailsWithItsStatusAndOutput) {
    const auto o = run(handler(sh("echo oops >&2; exit 3")));
    EXPECT_FALSE(o.ok);
    EXPECT_EQ(o.error, "exit status 3");
    EXPECT_EQ(o.details["exit_code"], 3);
    EXPECT_EQ(o.details["stderr"], "oops\n");
}

TEST_F(ExecTest, DeathBySignalFails) {
    const auto o = run(handler(sh("kill -USR1 $$")));
    EXPECT_FALSE(o.ok);
    EXPECT_EQ(o.error, "killed by SIGUSR1");
}

TEST_F(ExecTest, ProgramThatCannotStartFails) {
    const auto program = dir / "gone";
    test::write_file(program, "#!/bin/sh\n");
    ExecConfig c;
    c.command = {program.string()};
    auto h = handler(c);
    std::filesystem::remove(program);  // valid at load, gone by the delivery
    const auto o = run(h);
    EXPECT_FALSE(o.ok);
    EXPECT_EQ(o.error, "cannot start " + program.string() + ": No such file or directory");
}

TEST_F(ExecTest, TimeoutSendsSigtermThenSigkillToAChildThatIgnoresIt) {
    auto c = sh("trap '' TERM; echo waiting; while :; do sleep 1; done");
    c.timeout = std::chrono::milliseconds(200);
    c.kill_grace = std::chrono::milliseconds(200);
    const auto o = run(handler(c));
    EXPECT_FALSE(o.ok);
    EXPECT_NE(o.error.find("timed out (timeout_ms 200) after "), std::string::npos) << o.error;
    EXPECT_NE(o.error.find("process group sent SIGTERM, then SIGKILL"), std::string::npos)
        << o.error;
    EXPECT_EQ(o.details["signal"], "SIGKILL");
    EXPECT_EQ(o.details["stdout"], "waiting\n");
}

TEST_F(ExecTest, ChattyChildIsReadConcurrentlyAndCapturedBounded) {
    const auto o = run(handler(
        sh("head -c 3000000 /dev/zero | tr '\\0' a; head -c 2000000 /dev/zero | tr '\\0' b >&2")));
    ASSERT_TRUE(o.ok) << o.error;
    const auto out = o.details["stdout"].get<std::string>();
    EXPECT_EQ(out, std::string(max_captured_output, 'a') + "...[truncated: 3000000 bytes in all]");
    EXPECT_EQ(o.details["stderr"].get<std::string>(),
              std::string(max_captured_output, 'b') + "...[truncated: 2000000 bytes in all]");
}

TEST_F(ExecTest, GrandchildHoldingTheOutputDoesNotHoldTheDeliveryAndIsKilled) {
    const auto pidfile = dir / "grandchild";
    const auto o = run(handler(sh("sleep 60 & echo $! > " + pidfile.string() + "; echo done")));
    ASSERT_TRUE(o.ok) << o.error;
    EXPECT_EQ(o.details["stdout"], "done\n");
    const int grandchild = std::stoi(test::read_file(pidfile));
    // Its process group was killed; it closes its end of the pipe on the way out, so it may still
    // be exiting. A pidfd becomes readable once it has exited (or fails: it is already gone).
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, grandchild, 0));
    if (pidfd >= 0) {
        pollfd p{pidfd, POLLIN, 0};
        EXPECT_EQ(::poll(&p, 1, 10000), 1) << "grandchild " << grandchild << " is still running";
        ::close(pidfd);
    } else {
        EXPECT_EQ(errno, ESRCH);
    }
}

TEST_F(ExecTest, ConcurrencyLimitIsHeldAndExcessWaits) {
    const auto log = dir / "log";
    // Each run records its start and end; the sleep makes runs overlap if they are allowed to.
    auto c = sh("echo \"+$SIGSCI_EVENT_ID\" >> " + log.string() + "; sleep 0.2; echo - >> " +
                log.string());
    c.max_concurrent = 2;
    auto h = handler(c);
    // The spool hands it at most this many at once; the rest wait there, not in its queue.
    EXPECT_EQ(h->max_in_flight(), 2 * Handler::in_flight_per_concurrent);
    std::vector<std::future<DeliveryOutcome>> futures;
    std::vector<std::string> ids;
    for (int i = 0; i < 6; ++i) {
        auto promise = std::make_shared<std::promise<DeliveryOutcome>>();
        futures.push_back(promise->get_future());
        auto e = flag_event();
        ids.push_back(e->id);
        h->deliver(e, [promise](DeliveryOutcome o) { promise->set_value(std::move(o)); });
        EXPECT_LE(h->running(), 2u);
    }
    for (auto& f : futures) {
        ASSERT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready);
        EXPECT_TRUE(f.get().ok);
    }
    int now = 0, peak = 0;
    std::vector<std::string> started;
    for (const auto& line : test::read_lines(log)) {
        if (line[0] == '+') {
            started.push_back(line.substr(1));
            peak = std::max(peak, ++now);
        } else {
            --now;
        }
    }
    EXPECT_EQ(peak, 2);  // observed: two ran at once, never three
    ASSERT_EQ(started.size(), 6u);
    // The first two ran at once; the rest waited for a slot. (Children started together may log
    // their start in either order, so that is all the log can show.)
    EXPECT_EQ(std::set<std::string>(started.begin(), started.begin() + 2),
              std::set<std::string>(ids.begin(), ids.begin() + 2));
    EXPECT_EQ(std::set<std::string>(started.begin(), started.end()),
              std::set<std::string>(ids.begin(), ids.end()));
}

// A delivery waiting for a slot holds only its event: its command is made (and the event's JSON
// parsed for it) when its turn comes. One that cannot be made then gives the slot to the next.
TEST_F(ExecTest, AWaitingDeliveryIsMadeIntoACommandOnlyWhenItsTurnComes) {
    const auto fifo = dir / "gate";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    // The first run reads the FIFO (so it runs until the test writes to it); the others exit.
    auto c = sh("[ -p \"$1\" ] && cat \"$1\" > /dev/null; true");
    c.command.push_back("sh");
    c.command.push_back("{/payload/wait}");
    c.max_concurrent = 1;
    auto h = handler(c);
    const auto event_waiting_on = [](const std::optional<std::string>& path) {
        auto doc = Json::parse(test::sample("flag"));
        if (path) doc["payload"]["wait"] = *path;
        const auto body = doc.dump();
        return make_event("/sigsci/prod", body, parse_envelope(body).value(),
                          std::chrono::system_clock::now());
    };
    std::vector<std::future<DeliveryOutcome>> f;
    for (const auto& path : {std::optional<std::string>(fifo.string()),
                             std::optional<std::string>(), std::optional<std::string>("none")}) {
        auto promise = std::make_shared<std::promise<DeliveryOutcome>>();
        f.push_back(promise->get_future());
        h->deliver(event_waiting_on(path),
                   [promise](DeliveryOutcome o) { promise->set_value(std::move(o)); });
    }
    // The second has no /payload/wait, but nobody looked yet: the first still holds the slot.
    EXPECT_EQ(f[1].wait_for(std::chrono::seconds(0)), std::future_status::timeout);
    {
        std::ofstream gate(fifo);  // opens once the first run opens its end
        gate << "go\n";
    }
    ASSERT_EQ(f[0].wait_for(std::chrono::seconds(30)), std::future_status::ready);
    const auto first = f[0].get();
    EXPECT_TRUE(first.ok) << first.error;
    ASSERT_EQ(f[1].wait_for(std::chrono::seconds(30)), std::future_status::ready);
    EXPECT_EQ(f[1].get().error,
              "command[4]: /payload/wait is not in the event; the command was not run");
    ASSERT_EQ(f[2].wait_for(std::chrono::seconds(30)), std::future_status::ready)
        << "the slot was not given on after a command that could not be made";
    const auto third = f[2].get();
    EXPECT_TRUE(third.ok) << third.error;
    EXPECT_EQ(h->running(), 0u);
}

TEST_F(ExecTest, DaemonFdsDoNotReachTheChild) {
    const int leaky = ::open("/dev/null", O_RDONLY);  // no O_CLOEXEC, as a careless library might
    ASSERT_GE(leaky, 0);
    ExecConfig c;
    c.command = {"/bin/ls", "/proc/self/fd"};
    const auto o = run(handler(c));
    ::close(leaky);
    ASSERT_TRUE(o.ok) << o.error;
    std::set<std::string> fds;
    std::istringstream in(o.details["stdout"].get<std::string>());
    for (std::string l; std::getline(in, l);) fds.insert(l);
    // stdin, stdout, stderr, and the directory ls itself opened to list them.
    EXPECT_EQ(fds, (std::set<std::string>{"0", "1", "2", "3"}));
    EXPECT_GT(leaky, 3);
}

// A reload retires the handler: the runtime lets go of it while deliveries still wait for a
// slot. It must live on until they have all run (docs/architecture.md), not drop them unreported.
TEST_F(ExecTest, DeliveriesWaitingForASlotRunAfterTheHandlerIsLetGo) {
    auto c = sh("cat > /dev/null");
    c.max_concurrent = 1;
    auto h = handler(c);
    std::vector<std::future<DeliveryOutcome>> outcomes;
    for (int i = 0; i < 3; ++i) {
        auto promise = std::make_shared<std::promise<DeliveryOutcome>>();
        outcomes.push_back(promise->get_future());
        h->deliver(flag_event(),
                   [promise](DeliveryOutcome o) { promise->set_value(std::move(o)); });
    }
    h.reset();
    for (auto& f : outcomes) {
        ASSERT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready)
            << "a waiting delivery was dropped with its handler";
        EXPECT_TRUE(f.get().ok);
    }
}

TEST_F(ExecTest, TerminateStopsRunningAndFailsWaitingDeliveries) {
    auto c = sh("trap 'exit 7' TERM; while :; do sleep 1; done");
    c.max_concurrent = 1;
    auto h = handler(c);
    auto running = std::make_shared<std::promise<DeliveryOutcome>>();
    auto waiting = std::make_shared<std::promise<DeliveryOutcome>>();
    auto f1 = running->get_future();
    auto f2 = waiting->get_future();
    h->deliver(flag_event(), [running](DeliveryOutcome o) { running->set_value(std::move(o)); });
    h->deliver(flag_event(), [waiting](DeliveryOutcome o) { waiting->set_value(std::move(o)); });
    ASSERT_EQ(h->running(), 1u);
    h->terminate();
    ASSERT_EQ(f2.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    EXPECT_EQ(f2.get().error, "the daemon is stopping; the command was not run");
    ASSERT_EQ(f1.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    const auto o = f1.get();
    EXPECT_FALSE(o.ok);
    EXPECT_NE(o.error.find("stopped at shutdown"), std::string::npos) << o.error;
}

// ---- config --------------------------------------------------------------------------------

Result<Config> exec_config(const std::string& handler_json, const std::filesystem::path& base) {
    return parse_config(
        R"({"listen": ["127.0.0.1:0"], "endpoints": [{"path": "/a", "signing_keys": [{"value": "k"}],
        "routes": [{"types": ["*"], "handlers": ["run"]}]}], "handlers": {"run": )" +
            handler_json + "}}",
        "t.json", base);
}

TEST(ExecConfig, ValidatesCommandNumbersEnvAndCwd) {
    test::TempDir dir;
    test::write_file(dir / "script.sh", "#!/bin/sh\n");
    std::filesystem::permissions(dir / "script.sh", std::filesystem::perms::owner_all);
    test::write_file(dir / "plain.txt", "");
    auto ok = exec_config(
        R"({"kind": "exec", "command": ["./script.sh", "{/payload/source}"], "timeout_ms": 500,
        "max_concurrent": 2, "env": {"A": "b"}, "cwd": "."})",
        dir.path());
    ASSERT_TRUE(ok) << ok.error();
    EXPECT_EQ(
        ok.value().handlers[0].summary,
        (dir / "script.sh").string() + " {/payload/source} (timeout 500 ms, at most 2 at once)");
    auto in_path = exec_config(R"({"kind": "exec", "command": ["true"]})", dir.path());
    ASSERT_TRUE(in_path) << in_path.error();
    const std::vector<std::pair<std::string, std::string>> bad = {
        {R"({"kind": "exec", "command": []})", "t.json: handlers.run.command: must name a program"},
        {R"({"kind": "exec"})", "t.json: handlers.run: missing required key \"command\""},
        {R"({"kind": "exec", "command": ["no-such-program-here"]})",
         "t.json: handlers.run.command[0]: \"no-such-program-here\" is not found in PATH"},
        {R"({"kind": "exec", "command": ["./plain.txt"]})",
         "t.json: handlers.run.command[0]: " + (dir / "plain.txt").string() +
             " is not an executable file"},
        {R"({"kind": "exec", "command": ["/bin/true", "{/a/~9}"]})",
         "t.json: handlers.run.command[1]: \"{/a/~9}\" is not a valid JSON pointer template"},
        {R"({"kind": "exec", "command": ["/bin/true"], "timeout_ms": 0})",
         "t.json: handlers.run.timeout_ms: must be a whole number from 1 to 86400000"},
        {R"({"kind": "exec", "command": ["/bin/true"], "max_concurrent": 0})",
         "t.json: handlers.run.max_concurrent: must be a whole number from 1 to 1024"},
        {R"({"kind": "exec", "command": ["/bin/true"], "env": {"A=B": "c"}})",
         "t.json: handlers.run.env.A=B: is not a valid variable name"},
        {R"({"kind": "exec", "command": ["/bin/true"], "cwd": "missing"})",
         "t.json: handlers.run.cwd: " + (dir / "missing").string() + " is not a directory"},
        {R"({"kind": "exec", "command": ["/bin/true"], "shell": true})",
         "t.json: handlers.run.shell: unknown key"},
    };
    for (const auto& [json, message] : bad) {
        auto r = exec_config(json, dir.path());
        ASSERT_FALSE(r) << json;
        EXPECT_EQ(r.error(), message);
    }
}

}  // namespace
}  // namespace sigsci
