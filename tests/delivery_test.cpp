// The delivery pool: each handler's deliveries start one at a time and in order, so a handler that
// hangs holds one thread and the others keep delivering to every other handler.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "sigsci/delivery.hpp"
#include "sigsci/envelope.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

EventPtr sample_event() {
    const auto body = test::sample("flag");
    return make_event("/hook", body, parse_envelope(body).value(),
                      std::chrono::system_clock::now());
}

// An event whose body is `size` bytes.
EventPtr event_of_size(std::size_t size) {
    std::string body = R"({"type":"flag","payload":")";
    body += std::string(size - body.size() - 2, 'x') + "\"}";
    return make_event("/hook", body, parse_envelope(body).value(),
                      std::chrono::system_clock::now());
}

// Each delivery waits at `gate` (until it opens), and records its number and how many of this
// handler's deliveries were running at once.
class Gated final : public Handler {
  public:
    explicit Gated(std::shared_future<void> gate) : Handler("gated"), gate_(std::move(gate)) {}

    void deliver(const EventPtr&, DeliveryDone done) override {
        const int now = ++running_;
        int seen = most_at_once.load();
        while (now > seen && !most_at_once.compare_exchange_weak(seen, now)) {
        }
        {
            std::lock_guard lock(mutex);
            started.push_back(next_++);
        }
        gate_.wait();
        --running_;
        done({});
    }

    std::atomic<int> most_at_once{0};
    std::mutex mutex;
    std::vector<int> started;

  private:
    std::shared_future<void> gate_;
    std::atomic<int> running_{0};
    int next_ = 0;  // under mutex
};

class Quick final : public Handler {
  public:
    Quick() : Handler("quick") {}
    void deliver(const EventPtr&, DeliveryDone done) override { done({}); }
};

TEST(DeliveryPool, AHandlerThatHangsHoldsOneThreadAndTheOthersKeepDelivering) {
    DeliveryPool pool(2);
    std::promise<void> open;
    auto gated = std::make_shared<Gated>(open.get_future().share());
    const auto event = sample_event();
    std::atomic<int> gated_done{0};
    for (int i = 0; i < 3; ++i) {
        pool.run(event, gated, [&](DeliveryOutcome outcome, double) {
            if (outcome.ok) ++gated_done;
        });
    }
    // Queued behind three deliveries to a handler that does not return: with the threads shared
    // freely, the first two would hold both, and this one would wait for the gate.
    std::promise<bool> quick;
    pool.run(event, std::make_shared<Quick>(),
             [&](DeliveryOutcome outcome, double) { quick.set_value(outcome.ok); });
    auto delivered = quick.get_future();
    const bool in_time = delivered.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
    open.set_value();
    pool.stop();
    ASSERT_TRUE(in_time) << "a hung handler kept another handler's delivery from running";
    EXPECT_TRUE(delivered.get());
    EXPECT_EQ(gated_done.load(), 3);
    EXPECT_EQ(gated->most_at_once.load(), 1);
    EXPECT_EQ(gated->started, (std::vector<int>{0, 1, 2}));
}

TEST(DeliveryPool, StopWithinGivesUpOnADeliveryThatDoesNotReturnAndLeavesItSafeToFinish) {
    std::promise<void> open;
    auto gated = std::make_shared<Gated>(open.get_future().share());
    std::promise<bool> reported;
    auto delivered = reported.get_future();
    {
        DeliveryPool pool(2);
        pool.run(sample_event(), gated,
                 [&](DeliveryOutcome outcome, double) { reported.set_value(outcome.ok); });
        pool.run(sample_event(), std::make_shared<Quick>(), [](DeliveryOutcome, double) {});
        EXPECT_FALSE(pool.stop_within(std::chrono::milliseconds(100)));
        EXPECT_FALSE(pool.stop_within(std::chrono::milliseconds(100)));  // the first answer holds
    }
    // The pool is gone; the thread left in the handler still has what it needs to finish.
    open.set_value();
    ASSERT_EQ(delivered.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    EXPECT_TRUE(delivered.get());
}

TEST(DeliveryPool, StopWithinIsTrueWhenEveryDeliveryReturns) {
    DeliveryPool pool(2);
    std::atomic<int> done{0};
    for (int i = 0; i < 10; ++i)
        pool.run(sample_event(), std::make_shared<Quick>(),
                 [&](DeliveryOutcome, double) { ++done; });
    EXPECT_TRUE(pool.stop_within(std::chrono::seconds(30)));
    EXPECT_EQ(done.load(), 10);
}

// Fails its first delivery by throwing, then succeeds.
class ThrowsOnce final : public Handler {
  public:
    ThrowsOnce() : Handler("throws-once") {}
    void deliver(const EventPtr&, DeliveryDone done) override {
        if (calls_++ == 0) throw std::runtime_error("first call");
        done({});
    }

  private:
    int calls_ = 0;  // one at a time: the pool runs this handler's deliveries in turn
};

TEST(DeliveryPool, AHandlersQueuedDeliveriesRunAfterOneThrowsAndBeforeStopReturns) {
    DeliveryPool pool(2);
    auto handler = std::make_shared<ThrowsOnce>();
    const auto event = sample_event();
    std::mutex mutex;
    std::vector<std::string> outcomes;
    for (int i = 0; i < 5; ++i) {
        pool.run(event, handler, [&](DeliveryOutcome outcome, double) {
            std::lock_guard lock(mutex);
            outcomes.push_back(outcome.ok ? "ok" : outcome.error);
        });
    }
    pool.stop();  // finishes what was queued
    EXPECT_EQ(outcomes,
              (std::vector<std::string>{"handler threw: first call", "ok", "ok", "ok", "ok"}));
}

// Reports each event's id back (in the outcome's details); its first delivery waits at `gate`;
// records the size of every batch it is given.
class Recording final : public Handler {
  public:
    explicit Recording(std::shared_future<void> gate)
        : Handler("recording"), gate_(std::move(gate)) {}
    void deliver_batch(std::span<const EventPtr> events, BatchDone done) override {
        {
            std::lock_guard lock(mutex);
            batches.push_back(events.size());
        }
        Handler::deliver_batch(events, std::move(done));
    }
    void deliver(const EventPtr& event, DeliveryDone done) override {
        if (!first_done_) {
            first_done_ = true;  // one at a time: the pool runs this handler's deliveries in turn
            gate_.wait();
        }
        if (event->id == throw_on) throw std::runtime_error("refused " + event->id);
        DeliveryOutcome outcome;
        outcome.details["id"] = event->id;
        done(std::move(outcome));
    }

    std::string throw_on;  // set before the first delivery
    std::mutex mutex;
    std::vector<std::size_t> batches;

  private:
    std::shared_future<void> gate_;
    bool first_done_ = false;
};

// While a handler's delivery runs, what is submitted for it queues; it then goes to the handler
// as one batch, and each outcome still reaches the job it came from, under that job's index.
TEST(DeliveryPool, JobsQueuedBehindARunningOneGoToTheHandlerAsOneBatch) {
    DeliveryPool pool(2);
    std::promise<void> open;
    auto handler = std::make_shared<Recording>(open.get_future().share());
    std::mutex mutex;
    std::vector<std::string> reported;  // "job/index:id" for every outcome
    std::vector<EventPtr> events;
    for (int i = 0; i < 9; ++i) events.push_back(sample_event());
    const auto record = [&](const std::string& job, std::size_t i, const DeliveryOutcome& o) {
        std::lock_guard lock(mutex);
        reported.push_back(job + "/" + std::to_string(i) + ":" + o.details.value("id", "?"));
    };
    pool.run(events[0], handler, [&](DeliveryOutcome o, double) { record("a", 0, o); });
    for (int i = 1; i <= 5; ++i) {
        pool.run(events[i], handler,
                 [&, i](DeliveryOutcome o, double) { record("s" + std::to_string(i), 0, o); });
    }
    pool.run_batch({events[6], events[7], events[8]}, handler,
                   [&](std::size_t i, DeliveryOutcome o, double) { record("b", i, o); });
    open.set_value();
    pool.stop();
    EXPECT_EQ(handler->batches, (std::vector<std::size_t>{1, 8}));
    std::vector<std::string> expected = {"a/0:" + events[0]->id};
    for (int i = 1; i <= 5; ++i)
        expected.push_back("s" + std::to_string(i) + "/0:" + events[i]->id);
    for (int i = 0; i < 3; ++i)
        expected.push_back("b/" + std::to_string(i) + ":" + events[6 + i]->id);
    EXPECT_EQ(reported, expected);
}

// A handler that was held up gets what queued meanwhile in batches of at most max_batch_events.
TEST(DeliveryPool, MergedBatchesHoldAtMostMaxBatchEvents) {
    DeliveryPool pool(2);
    std::promise<void> open;
    auto handler = std::make_shared<Recording>(open.get_future().share());
    const auto event = sample_event();
    std::atomic<int> done{0};
    const std::size_t queued = DeliveryPool::max_batch_events + 76;
    for (std::size_t i = 0; i <= queued; ++i) {
        pool.run(event, handler, [&](DeliveryOutcome, double) { ++done; });
    }
    open.set_value();
    pool.stop();
    EXPECT_EQ(handler->batches, (std::vector<std::size_t>{1, DeliveryPool::max_batch_events, 76}));
    EXPECT_EQ(done.load(), static_cast<int>(queued + 1));
}

// Large events merge into batches of at most max_batch_bytes of bodies: a batch is held, and a
// `file` handler copies it into one string, whole until it is written.
TEST(DeliveryPool, MergedBatchesHoldAtMostMaxBatchBytes) {
    DeliveryPool pool(2);
    std::promise<void> open;
    auto handler = std::make_shared<Recording>(open.get_future().share());
    const auto third = event_of_size(DeliveryPool::max_batch_bytes / 3);  // 3 fit, 4 do not
    const auto whole = event_of_size(DeliveryPool::max_batch_bytes + 1);
    std::atomic<int> done{0};
    const auto count = [&](DeliveryOutcome, double) { ++done; };
    pool.run(third, handler, count);  // runs, held at the gate; the rest queue behind it
    for (int i = 0; i < 7; ++i) pool.run(third, handler, count);
    pool.run(whole, handler, count);  // more than the limit alone: runs alone
    pool.run(third, handler, count);
    open.set_value();
    pool.stop();
    EXPECT_EQ(handler->batches, (std::vector<std::size_t>{1, 3, 3, 1, 1, 1}));
    EXPECT_EQ(done.load(), 10);
}

// One batch with more than max_batch_bytes of bodies (a poller pass over large events) reaches
// the handler in parts of at most that much, and each outcome still reaches its own index.
TEST(DeliveryPool, ABatchOverMaxBatchBytesGoesToTheHandlerInParts) {
    DeliveryPool pool(2);
    std::promise<void> open;
    open.set_value();
    auto handler = std::make_shared<Recording>(open.get_future().share());
    std::vector<EventPtr> events;
    for (int i = 0; i < 4; ++i) events.push_back(event_of_size(DeliveryPool::max_batch_bytes / 3));
    events.push_back(event_of_size(DeliveryPool::max_batch_bytes + 1));
    events.push_back(event_of_size(100));
    std::mutex mutex;
    std::vector<std::string> delivered(events.size());
    pool.run_batch(events, handler, [&](std::size_t i, DeliveryOutcome o, double) {
        std::lock_guard lock(mutex);
        delivered.at(i) = o.details["id"].get<std::string>();
    });
    pool.stop();
    EXPECT_EQ(handler->batches, (std::vector<std::size_t>{3, 1, 1, 1}));
    for (std::size_t i = 0; i < events.size(); ++i) EXPECT_EQ(delivered[i], events[i]->id) << i;
}

// In a batch, a delivery that throws fails alone: the events after it are still delivered.
TEST(DeliveryPool, ADeliveryThatThrowsInABatchFailsAlone) {
    DeliveryPool pool(1);
    std::promise<void> open;
    open.set_value();
    auto handler = std::make_shared<Recording>(open.get_future().share());
    std::vector<EventPtr> events = {sample_event(), sample_event(), sample_event()};
    handler->throw_on = events[1]->id;
    std::vector<std::string> outcomes(3);
    pool.run_batch(events, handler, [&](std::size_t i, DeliveryOutcome o, double) {
        outcomes[i] = o.ok ? "ok" : o.error;
    });
    pool.stop();
    EXPECT_EQ(outcomes,
              (std::vector<std::string>{"ok", "handler threw: refused " + events[1]->id, "ok"}));
}

}  // namespace
}  // namespace sigsci
