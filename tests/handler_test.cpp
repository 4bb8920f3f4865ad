#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <future>
#include <set>
#include <thread>

#include "sigsci/dispatcher.hpp"
#include "sigsci/file_handler.hpp"
#include "sigsci/log.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

EventPtr event_of(const std::string& body) {
    auto env = parse_envelope(body);
    EXPECT_TRUE(env) << env.error();
    return make_event("/hook", body, std::move(env).value(), std::chrono::system_clock::now());
}

// Submits and returns what the sink answered.
// The dispatcher answers before submit() returns.
SubmitResult submit_result(EventSink& sink, const EventPtr& e, std::vector<HandlerPtr> handlers) {
    SubmitResult result{SubmitResult::Status::failed, {}, "not answered"};
    sink.submit(e, std::move(handlers), [&](SubmitResult r) { result = std::move(r); });
    return result;
}
SubmitResult::Status submit(EventSink& sink, const EventPtr& e, std::vector<HandlerPtr> handlers) {
    return submit_result(sink, e, std::move(handlers)).status;
}
constexpr auto accepted = SubmitResult::Status::accepted;
constexpr std::uint64_t plenty = 1ull << 30;  // a pending-bytes limit no test reaches

DeliveryOutcome deliver_now(Handler& h, const EventPtr& e) {
    DeliveryOutcome out{false, "not called"};
    h.deliver(e, [&](DeliveryOutcome o) { out = std::move(o); });
    return out;
}

TEST(FileHandler, WritesOneCompactLinePerEventWithAllFields) {
    test::TempDir dir;
    FileHandler h("archive", dir / "events.jsonl");
    const auto e = event_of(test::sample("flag"));  // pretty-printed sample
    ASSERT_TRUE(deliver_now(h, e).ok);
    const auto lines = test::read_lines(dir / "events.jsonl");
    ASSERT_EQ(lines.size(), 1u);
    auto record = Json::parse(lines[0]);
    EXPECT_EQ(record["id"], e->id);
    EXPECT_EQ(record["received_at"], e->received_at);
    EXPECT_EQ(record["endpoint"], "/hook");
    EXPECT_EQ(record["type"], "flag");
    EXPECT_EQ(record["payload"], Json::parse(test::sample("flag"))["payload"]);
    EXPECT_EQ(record["link"], Json::parse(test::sample("flag"))["link"]);
}

TEST(FileHandler, ConcurrentWritersNeverTearOrInterleaveLines) {
    test::TempDir dir;
    FileHandler h("archive", dir / "events.jsonl");
    constexpr int threads = 8;
    constexpr int per_thread = 300;
    // Bodies of very different sizes make torn or interleaved writes visible.
    const auto big = event_of(R"({"type":"listUpdated","payload":{"entries":")" +
                              std::string(70000, 'x') + R"("}})");
    const auto small = event_of(test::sample("flag"));
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            for (int i = 0; i < per_thread; ++i) {
                EXPECT_TRUE(deliver_now(h, (i + t) % 4 == 0 ? big : small).ok);
            }
        });
    }
    for (auto& t : pool) t.join();
    const auto lines = test::read_lines(dir / "events.jsonl");
    ASSERT_EQ(lines.size(), static_cast<std::size_t>(threads * per_thread));
    for (const auto& line : lines) {
        auto record = Json::parse(line);  // throws on a torn line
        EXPECT_TRUE(record["id"] == big->id || record["id"] == small->id);
    }
}

TEST(FileHandler, ReopenFollowsLogrotate) {
    test::TempDir dir;
    FileHandler h("archive", dir / "events.jsonl");
    ASSERT_TRUE(deliver_now(h, event_of(test::sample("flag"))).ok);
    std::filesystem::rename(dir / "events.jsonl", dir / "events.jsonl.1");
    ASSERT_TRUE(deliver_now(h, event_of(test::sample("flag"))).ok);  // still the old file
    h.reopen();
    ASSERT_TRUE(deliver_now(h, event_of(test::sample("flag"))).ok);
    EXPECT_EQ(test::read_lines(dir / "events.jsonl.1").size(), 2u);
    EXPECT_EQ(test::read_lines(dir / "events.jsonl").size(), 1u);
}

// A reopen (SIGHUP) while a write hangs (a full pipe here; a hung mount in life) does not
// wait for it: it returns, and the write after the hung one goes to the new file.
TEST(FileHandler, ReopenDoesNotWaitForAWriteThatHangs) {
    test::TempDir dir;
    const auto path = dir / "events.jsonl";
    ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
    const int reader = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // not read yet
    ASSERT_GE(reader, 0);
    FileHandler h("archive", path);
    // More than the 64 KiB a pipe holds: this write hangs until the pipe is read.
    const auto big =
        event_of(R"({"type":"flag","payload":{"pad":")" + std::string(100000, 'x') + R"("}})");
    auto hung = std::async(std::launch::async, [&] { return deliver_now(h, big); });
    pollfd pfd{reader, POLLIN, 0};
    ASSERT_EQ(::poll(&pfd, 1, 10000), 1);  // data in the pipe: the write is under way

    // logrotate: the pipe moves away, a plain file takes its name, SIGHUP.
    std::filesystem::rename(path, dir / "events.jsonl.1");
    auto reopened = std::async(std::launch::async, [&] { h.reopen(); });
    const bool returned = reopened.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
    EXPECT_TRUE(returned) << "reopen waited for the hung write";

    // Read the pipe until the hung line has ended (its last byte is the newline), then write
    // again. Waiting on the line, not on the future, leaves no gap between the write's last byte
    // and the thread that made it returning, in which a poll would find nothing to read.
    std::string drained;
    char buf[65536];
    while (drained.find('\n') == std::string::npos) {
        ASSERT_EQ(::poll(&pfd, 1, 10000), 1) << "the hung write stopped before its line ended";
        const ssize_t n = ::read(reader, buf, sizeof buf);
        if (n == 0) break;  // every writer has closed the pipe: the line will not end
        if (n > 0) drained.append(buf, static_cast<std::size_t>(n));
    }
    EXPECT_TRUE(hung.get().ok);
    for (ssize_t n; (n = ::read(reader, buf, sizeof buf)) > 0;)
        drained.append(buf, static_cast<std::size_t>(n));
    ::close(reader);
    reopened.wait();
    EXPECT_EQ(std::count(drained.begin(), drained.end(), '\n'), 1);  // the hung line, whole
    ASSERT_TRUE(deliver_now(h, event_of(test::sample("flag"))).ok);
    EXPECT_EQ(test::read_lines(path).size(), 1u);  // the new file
}

TEST(FileHandler, UnopenableFileFailsWithTheKeyPath) {
    try {
        FileHandler h("archive", "/nonexistent-dir/events.jsonl");
        FAIL() << "opened a file in a missing directory";
    } catch (const std::runtime_error& e) {
        EXPECT_EQ(std::string(e.what()),
                  "handlers.archive.path: cannot open /nonexistent-dir/events.jsonl: No such file "
                  "or directory");
    }
}

TEST(FileHandler, FailedWriteIsReportedNotSwallowed) {
    // /dev/full accepts open() and fails every write with ENOSPC, like a full disk.
    FileHandler h("archive", "/dev/full");
    const auto out = deliver_now(h, event_of(test::sample("flag")));
    EXPECT_FALSE(out.ok);
    EXPECT_NE(out.error.find("No space left on device"), std::string::npos) << out.error;
}

// A handler whose deliveries block until released, to hold the dispatcher busy.
class GateHandler final : public Handler {
  public:
    GateHandler() : Handler("gate") {}
    void deliver(const EventPtr&, DeliveryDone done) override {
        std::unique_lock lock(mutex_);
        ++started_;
        cv_.notify_all();
        cv_.wait(lock, [&] { return open_; });
        done({});
    }
    void open() {
        std::lock_guard lock(mutex_);
        open_ = true;
        cv_.notify_all();
    }
    void wait_started(int n) {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return started_ >= n; });
    }

  private:
    std::mutex mutex_;
    std::condition_variable cv_;
    int started_ = 0;
    bool open_ = false;
};

class ThrowingHandler final : public Handler {
  public:
    ThrowingHandler() : Handler("thrower") {}
    void deliver(const EventPtr&, DeliveryDone) override { throw std::runtime_error("boom"); }
};

class CountingHandler final : public Handler {
  public:
    explicit CountingHandler(std::string name) : Handler(std::move(name)) {}
    void deliver(const EventPtr&, DeliveryDone done) override {
        ++count;
        done({});
    }
    std::atomic<int> count{0};
};

class DispatcherTest : public ::testing::Test {
  protected:
    void SetUp() override {
        sink = std::make_shared<test::MemorySink>();
        log::configure(log::Format::json, log::Level::debug, sink);
    }
    void TearDown() override { log::configure(log::Format::json, log::Level::info); }
    std::shared_ptr<test::MemorySink> sink;
};

TEST_F(DispatcherTest, DeliversToEveryHandlerAndLogsEachOutcome) {
    Dispatcher d(2, {100, plenty});
    auto a = std::make_shared<CountingHandler>("a");
    auto b = std::make_shared<CountingHandler>("b");
    const auto e = event_of(test::sample("flag"));
    ASSERT_EQ(accepted, submit(d, e, {a, b}));
    ASSERT_TRUE(d.wait_idle(std::chrono::seconds(10)));
    EXPECT_EQ(a->count, 1);
    EXPECT_EQ(b->count, 1);
    int outcomes = 0;
    for (const auto& line : sink->lines()) {
        auto j = Json::parse(line);
        if (j["msg"] != "delivery") continue;
        ++outcomes;
        EXPECT_EQ(j["event_id"], e->id);
        EXPECT_EQ(j["status"], "delivered");
        EXPECT_EQ(j["attempt"], 1);
        EXPECT_EQ(j["type"], "flag");
    }
    EXPECT_EQ(outcomes, 2);
}

TEST_F(DispatcherTest, ThrowingHandlerIsAFailedDeliveryNotACrash) {
    Dispatcher d(2, {100, plenty});
    auto other = std::make_shared<CountingHandler>("other");
    ASSERT_EQ(accepted, submit(d, event_of(test::sample("flag")),
                               {std::make_shared<ThrowingHandler>(), other}));
    ASSERT_TRUE(d.wait_idle(std::chrono::seconds(10)));
    EXPECT_EQ(other->count, 1);
    EXPECT_TRUE(sink->wait_for([](const std::string& l) {
        auto j = Json::parse(l);
        return j["msg"] == "delivery" && j["handler"] == "thrower" && j["status"] == "failed" &&
               j["error"] == "handler threw: boom" && j["level"] == "error";
    }));
}

TEST_F(DispatcherTest, RefusesBeyondMaxPendingEvents) {
    Dispatcher d(2, {1, plenty});
    auto gate = std::make_shared<GateHandler>();
    ASSERT_EQ(accepted, submit(d, event_of(test::sample("flag")), {gate}));
    gate->wait_started(1);
    EXPECT_NE(accepted, submit(d, event_of(test::sample("flag")), {gate}));
    EXPECT_EQ(d.pending_events(), 1u);
    gate->open();
    ASSERT_TRUE(d.wait_idle(std::chrono::seconds(10)));
    EXPECT_EQ(accepted, submit(d, event_of(test::sample("flag")), {gate}));
    ASSERT_TRUE(d.wait_idle(std::chrono::seconds(10)));
}

// With the spool off, events stay in memory until delivered: a slow handler must not let signed
// senders grow that without bound when bodies are large.
TEST_F(DispatcherTest, RefusesBeyondMaxPendingBytesUntilDeliveriesEnd) {
    const auto size = event_of(test::sample("flag"))->body.size();
    Dispatcher d(2, {100, 2 * size + size / 2});  // two bodies fit, not three
    auto gate = std::make_shared<GateHandler>();
    const auto flag = [&] { return submit_result(d, event_of(test::sample("flag")), {gate}); };
    ASSERT_EQ(accepted, flag().status);
    ASSERT_EQ(accepted, flag().status);
    const auto refused = flag();
    EXPECT_EQ(refused.status, SubmitResult::Status::overloaded);
    EXPECT_EQ(refused.error,
              "limits.max_pending_bytes reached: too many event bytes waiting for delivery");
    EXPECT_EQ(d.pending_events(), 2u);
    d.set_pending_limits({100, 3 * size});  // a reload's limits apply to the next event
    EXPECT_EQ(accepted, flag().status);
    EXPECT_EQ(SubmitResult::Status::overloaded, flag().status);
    gate->open();
    ASSERT_TRUE(d.wait_idle(std::chrono::seconds(10)));
    // Delivered events give their bytes back.
    for (int i = 0; i < 3; ++i) EXPECT_EQ(accepted, flag().status) << i;
    ASSERT_TRUE(d.wait_idle(std::chrono::seconds(10)));
}

TEST_F(DispatcherTest, SlowHandlerDoesNotHoldBackOthers) {
    Dispatcher d(2, {100, plenty});
    auto gate = std::make_shared<GateHandler>();
    auto fast = std::make_shared<CountingHandler>("fast");
    ASSERT_EQ(accepted, submit(d, event_of(test::sample("flag")), {gate}));
    gate->wait_started(1);
    ASSERT_EQ(accepted, submit(d, event_of(test::sample("flag")), {fast}));
    // The fast delivery completes while the gate still holds a thread.
    EXPECT_TRUE(sink->wait_for(
        [](const std::string& l) { return l.find("\"handler\":\"fast\"") != std::string::npos; }));
    EXPECT_EQ(fast->count, 1);
    gate->open();
    ASSERT_TRUE(d.wait_idle(std::chrono::seconds(10)));
}

TEST_F(DispatcherTest, StopDoesNotWaitForAHandlerThatNeverReturns) {
    auto gate = std::make_shared<GateHandler>();
    {
        Dispatcher d(2, {100, plenty});
        ASSERT_EQ(accepted, submit(d, event_of(test::sample("flag")), {gate}));
        gate->wait_started(1);
        d.stop(std::chrono::milliseconds(0), {}, std::chrono::milliseconds(100));
    }
    EXPECT_TRUE(sink->wait_for([](const std::string& l) {
        auto j = Json::parse(l);
        return j["msg"] == "a delivery never returned; stopping without it" && j["lost"] == true &&
               j["level"] == "error";
    }));
    // The delivery left running may still finish (and log) once its handler returns.
    gate->open();
    EXPECT_TRUE(sink->wait_for([](const std::string& l) {
        auto j = Json::parse(l);
        return j["msg"] == "delivery" && j["handler"] == "gate" && j["status"] == "delivered";
    }));
}

TEST_F(DispatcherTest, StopFinishesQueuedDeliveries) {
    auto counter = std::make_shared<CountingHandler>("c");
    {
        Dispatcher d(1, {1000, plenty});
        for (int i = 0; i < 200; ++i)
            ASSERT_EQ(accepted, submit(d, event_of(test::sample("flag")), {counter}));
        d.stop(std::chrono::seconds(10));
        EXPECT_NE(accepted, submit(d, event_of(test::sample("flag")), {counter}));
    }
    EXPECT_EQ(counter->count, 200);
}

}  // namespace
}  // namespace sigsci
