#pragma once
// A handler acts on one event. The dispatcher calls deliver() on a delivery thread, never on an
// I/O thread, and the handler calls `done` exactly once, possibly later from another thread.
#include <chrono>
#include <functional>
#include <memory>
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
