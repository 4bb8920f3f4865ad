#pragma once
// The durable EventSink: an event is answered 200 only after its commit to the spool, and every
// (event, handler) delivery is driven from the spool until it is delivered or dead-lettered.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>

#include "sigsci/config.hpp"
#include "sigsci/dispatcher.hpp"
#include "sigsci/spool.hpp"

namespace sigsci {

class SpoolSink final : public EventSink {
  public:
    using HandlerLookup = std::function<HandlerPtr(const std::string& name)>;

    // How often the poller looks in the spool for what came due (retries, what `spool retry`
    // made pending) when nothing wakes it sooner.
    static constexpr std::chrono::milliseconds default_poll_interval{250};
    // The bodies of the deliveries running at once (besides at most 1,024 of them), so that a
    // backlog of large events is not read into memory all at once: one always runs.
    static constexpr std::size_t default_max_running_bytes = 64 << 20;
    // Deliveries running at once (and at most Handler::max_in_flight() of one handler); beyond
    // it, accepted events wait in the spool for the poller.
    static constexpr std::size_t max_in_flight = 1024;
    // How often a round of pruning starts (events past spool.retention, delivered).
    static constexpr std::chrono::milliseconds default_prune_interval{60000};

    // Opens the spool (throws SpoolError) and resumes every delivery left pending.
    // `metrics`, if given, counts each delivery's outcome and must outlive the sink.
    SpoolSink(SpoolConfig config, unsigned delivery_threads, PendingLimits pending_limits,
              HandlerLookup lookup, Metrics* metrics = nullptr,
              std::chrono::milliseconds poll_interval = default_poll_interval,
              std::size_t max_running_bytes = default_max_running_bytes,
              std::chrono::milliseconds prune_interval = default_prune_interval);
    ~SpoolSink() override;

    void submit(const EventPtr& event, std::vector<HandlerPtr> handlers, SubmitDone done) override;
    bool wait_idle(std::chrono::milliseconds timeout) override;
    void stop(std::chrono::milliseconds timeout, const std::function<void()>& on_timeout = {},
              std::chrono::milliseconds terminate_wait = std::chrono::seconds(5)) override;
    SinkStats stats() const override;
    void set_pending_limits(PendingLimits limits) override;

  private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

// The duplicate-detection key: SHA-256 over the endpoint path, a NUL, and the raw body.
std::string body_hash(std::string_view endpoint, std::string_view body);

// Rebuilds an event read back from the spool (same id and receipt time).
EventPtr restore_event(const StoredEvent& stored);

}  // namespace sigsci
