// Thread names: what `top -H` and `ps -L` show an operator (docs/architecture.md); and which
// threads are background work for the scheduler.
#include <gtest/gtest.h>
#include <sched.h>

#include <future>
#include <latch>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "sigsci/daemon.hpp"
#include "sigsci/delivery.hpp"
#include "sigsci/envelope.hpp"
#include "sigsci/threads.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

// The names of this process's threads, one entry per thread.
std::multiset<std::string> thread_names() {
    std::multiset<std::string> names;
    for (auto& t : test::threads()) names.insert(std::move(t.name));
    return names;
}

TEST(ThreadNames, ANameLongerThanTheKernelKeepsIsCutAt15Bytes) {
    std::promise<void> release;
    std::thread thread([done = release.get_future()] { done.wait(); });
    name_thread(thread, "short");
    const auto with_short = thread_names();
    name_thread(thread, "a-name-of-twenty-six-bytes");
    const auto with_long = thread_names();
    release.set_value();
    thread.join();
    EXPECT_EQ(with_short.count("short"), 1u);
    EXPECT_EQ(with_long.count("short"), 0u);
    EXPECT_EQ(with_long.count("a-name-of-twent"), 1u);
}

TEST(ThreadNames, EachOfTheDaemonsThreadsSaysWhatItDoes) {
    test::TempDir dir;
    test::write_file(dir / "key", "thread-test-key\n");
    test::write_file(dir / "config.json", R"({
      "listen": ["127.0.0.1:0"],
      "threads": 3,
      "endpoints": [{"path": "/hook", "signing_keys": [{"file": "key"}],
                     "routes": [{"types": ["*"], "handlers": ["archive"]}]}],
      "handlers": {"archive": {"kind": "file", "path": "events.jsonl"}},
      "spool": {"path": "spool.db"}
    })");
    auto cfg = load_config(dir / "config.json");
    ASSERT_TRUE(cfg) << cfg.error();
    // ThreadSanitizer starts a thread of its own at the process's first pthread_create: make
    // that happen before the snapshot, so that only the daemon's threads are new after it.
    std::thread([] {}).join();
    const auto before = thread_names();
    Daemon daemon(std::move(cfg).value());
    daemon.start();
    auto names = thread_names();
    daemon.shutdown();
    for (const auto& name : before) {
        if (const auto it = names.find(name); it != names.end()) names.erase(it);
    }
    // Three I/O threads, max(2, threads) delivery threads, the spool's writer, poller and
    // checkpointer.
    EXPECT_EQ(names,
              (std::multiset<std::string>{"sigsci-io-0", "sigsci-io-1", "sigsci-io-2",
                                          "sigsci-deliver", "sigsci-deliver", "sigsci-deliver",
                                          "spool-writer", "spool-poller", "spool-checkpt"}));
}

// The scheduling policy of the thread running each delivery, from several handlers; each
// delivery waits until `together` deliveries run at once.
struct PolicyLog {
    explicit PolicyLog(std::ptrdiff_t together) : latch(together) {}
    std::latch latch;
    std::mutex mutex;
    std::vector<int> policies;
};

class PolicyRecorder final : public Handler {
  public:
    PolicyRecorder(std::string name, PolicyLog& log) : Handler(std::move(name)), log_(log) {}

    void deliver(const EventPtr&, DeliveryDone done) override {
        log_.latch.arrive_and_wait();
        {
            std::lock_guard lock(log_.mutex);
            log_.policies.push_back(::sched_getscheduler(0));
        }
        done({});
    }

  private:
    PolicyLog& log_;
};

TEST(ThreadScheduling, DeliveriesRunAsBackgroundWork) {
    DeliveryPool pool(2);
    // Two deliveries that wait for each other, to two handlers (one handler's deliveries run one
    // at a time): each of the pool's two threads runs one.
    PolicyLog log(2);
    const auto body = test::sample("flag");
    const auto event =
        make_event("/hook", body, parse_envelope(body).value(), std::chrono::system_clock::now());
    for (const char* name : {"policy-a", "policy-b"}) {
        pool.run(event, std::make_shared<PolicyRecorder>(name, log),
                 [](DeliveryOutcome, double) {});
    }
    pool.stop();
    EXPECT_EQ(log.policies, (std::vector<int>{SCHED_BATCH, SCHED_BATCH}));
}

TEST(ThreadScheduling, RunAsBackgroundChangesOnlyTheCallingThread) {
    int inside = -1;
    std::thread([&] {
        ASSERT_TRUE(run_as_background());
        inside = ::sched_getscheduler(0);
    }).join();
    EXPECT_EQ(inside, SCHED_BATCH);
    EXPECT_EQ(::sched_getscheduler(0), SCHED_OTHER);
}

}  // namespace
}  // namespace sigsci
