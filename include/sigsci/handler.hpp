#pragma once
// A handler acts on one event. The dispatcher calls deliver() on a delivery thread, never on an
// I/O thread, and the handler calls `done` exactly once, possibly later from another thread.
#include <chrono>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "sigsci/event.hpp"

namespace sigsci {

struct DeliveryOutcome {
    bool ok = true;
    std::string error;              // why it failed; empty when ok
    Json details = Json::object();  // extra fields for the delivery log line (exit status, output)
    // A failure no retry can fix (a 4xx from a forward destination): dead-lettered at once.
    bool permanent = false;
    // The destination asked for at least this long before the next attempt (Retry-After).
    std::chrono::milliseconds retry_after{0};
};

using DeliveryDone = std::function<void(DeliveryOutcome)>;

class Handler {
  public:
    explicit Handler(std::string name) : name_(std::move(name)) {}
    virtual ~Handler() = default;
    Handler(const Handler&) = delete;
    Handler& operator=(const Handler&) = delete;

    const std::string& name() const { return name_; }

    virtual void deliver(const EventPtr& event, DeliveryDone done) = 0;

    // Several events at once (those one spool commit accepted, or that queued behind this
    // handler's last delivery): done(i, outcome) exactly once for each events[i]. The default
    // delivers them one by one, and a delivery that throws fails alone; a handler that can do
    // better (one write for many lines) overrides it.
    using BatchDone = std::function<void(std::size_t, DeliveryOutcome)>;
    virtual void deliver_batch(std::span<const EventPtr> events, BatchDone done) {
        // Asynchronous handlers call back after this returns: each callback shares `done`.
        const auto shared = std::make_shared<BatchDone>(std::move(done));
        for (std::size_t i = 0; i < events.size(); ++i) {
            try {
                deliver(events[i],
                        [i, shared](DeliveryOutcome outcome) { (*shared)(i, std::move(outcome)); });
            } catch (const std::exception& e) {
                (*shared)(i, {false, std::string("handler threw: ") + e.what()});
            }
        }
    }

    // The most of its deliveries worth running at once. A handler that does only a few at a time
    // (exec and forward: max_concurrent) is handed a few times that, and the spool keeps the
    // rest, so that a slow or failing one never holds the slots the other handlers need.
    virtual std::size_t max_in_flight() const { return SIZE_MAX; }  // no bound of its own
    // What a handler with `max_concurrent` deliveries at a time is handed at once: enough that
    // it never waits for the next between two of its own, few enough to leave the rest.
    static constexpr std::size_t in_flight_per_concurrent = 16;

    // SIGHUP: reopen whatever files the handler writes (logrotate moved them away).
    virtual void reopen() {}

    // Shutdown after the drain period: end running deliveries (they report failure and are
    // retried after the next start) and fail queued ones.
    virtual void terminate() {}

  private:
    std::string name_;
};

using HandlerPtr = std::shared_ptr<Handler>;

}  // namespace sigsci
