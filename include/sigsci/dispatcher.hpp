#pragma once
// The one place accepted events enter delivery. The request path calls submit(); handlers run
// on the dispatcher's own threads, never on I/O threads. The durable spool will sit in front
// of this interface.
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "sigsci/handler.hpp"

namespace sigsci {

class EventSink {
  public:
    virtual ~EventSink() = default;
    // false: not accepted (overloaded); the caller answers 503 and nothing was kept.
    virtual bool submit(const EventPtr& event, std::vector<HandlerPtr> handlers) = 0;
};

class Dispatcher final : public EventSink {
  public:
    Dispatcher(unsigned threads, std::uint64_t max_pending_events);
    ~Dispatcher() override;

    bool submit(const EventPtr& event, std::vector<HandlerPtr> handlers) override;

    void set_max_pending_events(std::uint64_t n);
    std::uint64_t pending_events() const;

    // Blocks until no delivery is in flight or the timeout passes; true when idle.
    bool wait_idle(std::chrono::milliseconds timeout);

    // Waits for running deliveries, then joins the threads. Idempotent.
    void stop();

  private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace sigsci
