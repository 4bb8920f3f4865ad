#pragma once
// Where accepted events enter delivery. The request path submits through EventSink and answers
// only when the sink says the event is kept: the spool (spool_sink.hpp) answers after a durable
// commit; the in-memory Dispatcher here (spool disabled) answers at once.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sigsci/delivery.hpp"
#include "sigsci/handler.hpp"
#include "sigsci/metrics.hpp"

namespace sigsci {

struct SubmitResult {
    enum class Status { accepted, duplicate, overloaded, failed };
    Status status = Status::accepted;
    std::string id;     // the event's id; for a duplicate, the original event's id
    std::string error;  // for overloaded and failed: why, for the log
    Overload overload = Overload::max_pending_events;  // for overloaded: the limit it met
};

using SubmitDone = std::function<void(SubmitResult)>;

// How much may wait in memory before submit() answers overloaded: events accepted and waiting
// for the spool's next commit (with the spool off: for their deliveries to end), counted and in
// bytes of their bodies (limits.max_pending_events, limits.max_pending_bytes).
struct PendingLimits {
    std::uint64_t events;
    std::uint64_t bytes;
};

// The 503 for an event of `body_bytes` when `events` events of `bytes` in all already wait
// `for_what` ("for delivery", "for the spool"); none when it may wait too.
std::optional<SubmitResult> pending_refusal(const PendingLimits& limits, std::uint64_t events,
                                            std::uint64_t bytes, std::uint64_t body_bytes,
                                            const std::string& id, std::string_view for_what);

struct SinkStats {
    std::uint64_t backlog = 0;              // deliveries not yet done
    std::uint64_t dead = 0;                 // dead-lettered deliveries
    std::uint64_t checkpoint_failures = 0;  // the spool's failed WAL checkpoints so far
    // `backlog` by handler name, in name order, handlers with none left out; only when
    // `by_handler` (the spool's sink: the spool-off dispatcher does not count them).
    bool by_handler = false;
    std::vector<std::pair<std::string, std::uint64_t>> backlog_by_handler{};
};

class EventSink {
  public:
    virtual ~EventSink() = default;
    // Keeps the event for delivery to `handlers` and calls `done` (possibly on another thread,
    // possibly before returning). Nothing is kept unless done reports accepted.
    virtual void submit(const EventPtr& event, std::vector<HandlerPtr> handlers,
                        SubmitDone done) = 0;
    // Blocks until nothing is left to deliver (or dead), or the timeout passes.
    virtual bool wait_idle(std::chrono::milliseconds timeout) = 0;
    // Stops taking events and lets running deliveries finish within `timeout`; if some are still
    // running then, calls `on_timeout` (which ends them: Handler::terminate) and waits for them
    // to report, at most `terminate_wait` more. Then stops.
    virtual void stop(std::chrono::milliseconds timeout,
                      const std::function<void()>& on_timeout = {},
                      std::chrono::milliseconds terminate_wait = std::chrono::seconds(5)) = 0;
    virtual SinkStats stats() const = 0;
    // A reload's new limits; events already waiting stay.
    virtual void set_pending_limits(PendingLimits limits) = 0;
};

// The spool-disabled sink: events live in memory until delivered, one attempt each.
class Dispatcher final : public EventSink {
  public:
    // `metrics`, if given, counts each delivery's outcome and must outlive the dispatcher.
    Dispatcher(unsigned threads, PendingLimits limits, Metrics* metrics = nullptr);
    ~Dispatcher() override;

    void submit(const EventPtr& event, std::vector<HandlerPtr> handlers, SubmitDone done) override;
    bool wait_idle(std::chrono::milliseconds timeout) override;
    void stop(std::chrono::milliseconds timeout, const std::function<void()>& on_timeout = {},
              std::chrono::milliseconds terminate_wait = std::chrono::seconds(5)) override;
    SinkStats stats() const override;
    void set_pending_limits(PendingLimits limits) override;

    std::uint64_t pending_events() const;

  private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace sigsci
