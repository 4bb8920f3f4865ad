#pragma once
// Runs handlers on a thread pool of their own, never on the I/O threads.
#include <chrono>
#include <functional>
#include <memory>
#include <string_view>

#include "sigsci/handler.hpp"
#include "sigsci/log.hpp"

namespace sigsci {

class DeliveryPool {
  public:
    explicit DeliveryPool(unsigned threads);
    ~DeliveryPool();
    DeliveryPool(const DeliveryPool&) = delete;
    DeliveryPool& operator=(const DeliveryPool&) = delete;

    // Calls handler->deliver(event) on a pool thread; `done` gets the outcome and the time taken
    // in ms. A handler that throws is a failed delivery. `done` runs exactly once.
    void run(EventPtr event, HandlerPtr handler,
             std::function<void(DeliveryOutcome, double duration_ms)> done);

    // One pool job for several events to one handler (Handler::deliver_batch): one wake-up of
    // a pool thread for a whole commit's worth. done(i, outcome, ms) runs exactly once per event.
    // Jobs that queue while the handler's last one runs are merged into batches of at most
    // max_batch_events (a job with more still runs whole). Bodies are bounded too: a batch is
    // held, and often copied (a `file` handler's lines), whole until it is delivered, so merges
    // stop at max_batch_bytes of bodies, and a job with more goes to the handler in parts of at
    // most that much (one event at least), one after another.
    static constexpr std::size_t max_batch_events = 1024;
    static constexpr std::size_t max_batch_bytes = 1024 * 1024;
    void run_batch(std::vector<EventPtr> events, HandlerPtr handler,
                   std::function<void(std::size_t, DeliveryOutcome, double duration_ms)> done);

    // Finishes what was queued, then joins the threads. Idempotent.
    void stop();
    // The same within `timeout`: false when a delivery was still running then (a handler that
    // never returns, such as a write to a hung mount). What was still queued is then dropped,
    // the threads still busy are left to the process's exit, and the pool's state stays alive
    // for them. Idempotent; the first call's answer holds.
    bool stop_within(std::chrono::milliseconds timeout);
    // What the sinks log when stop_within() gave up or an outcome never came (logging.md).
    static constexpr std::string_view never_returned =
        "a delivery never returned; stopping without it";

  private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

// The `delivery` log line: one per attempt outcome.
void log_delivery(const Event& event, const std::string& handler, int attempt,
                  const DeliveryOutcome& outcome, std::string_view status, double duration_ms,
                  const log::Fields& extra = log::Fields::object());

}  // namespace sigsci
