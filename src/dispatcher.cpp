#include "sigsci/dispatcher.hpp"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>

#include "sigsci/log.hpp"
#include "sigsci/metrics.hpp"

namespace sigsci {

struct Dispatcher::Impl {
    Impl(unsigned threads, PendingLimits l, Metrics* m) : pool(threads), metrics(m), limits(l) {}

    DeliveryPool pool;
    Metrics* const metrics;
    mutable std::mutex mutex;
    std::condition_variable idle;
    PendingLimits limits;             // guarded by mutex
    std::uint64_t pending = 0;        // events with a delivery still running; guarded by mutex
    std::uint64_t pending_bytes = 0;  // their bodies; guarded by mutex
    std::uint64_t deliveries = 0;     // deliveries not yet done; guarded by mutex
    bool stopped = false;
};

std::optional<SubmitResult> pending_refusal(const PendingLimits& limits, std::uint64_t events,
                                            std::uint64_t bytes, std::uint64_t body_bytes,
                                            const std::string& id, std::string_view for_what) {
    if (events >= limits.events) {
        return SubmitResult{SubmitResult::Status::overloaded, id,
                            "too many events waiting " + std::string(for_what),
                            Overload::max_pending_events};
    }
    if (bytes + body_bytes > limits.bytes) {
        return SubmitResult{SubmitResult::Status::overloaded, id,
                            "limits.max_pending_bytes reached: too many event bytes waiting " +
                                std::string(for_what),
                            Overload::max_pending_bytes};
    }
    return std::nullopt;
}

Dispatcher::Dispatcher(unsigned threads, PendingLimits limits, Metrics* metrics)
    : impl_(std::make_shared<Impl>(threads, limits, metrics)) {}

Dispatcher::~Dispatcher() {
    stop(std::chrono::milliseconds(0));
}

void Dispatcher::submit(const EventPtr& event, std::vector<HandlerPtr> handlers, SubmitDone done) {
    const auto bytes = event->body.size();
    if (!handlers.empty()) {
        std::unique_lock lock(impl_->mutex);
        auto refused = impl_->stopped
                           ? SubmitResult{SubmitResult::Status::overloaded, event->id,
                                          "shutting down", Overload::shutting_down}
                           : pending_refusal(impl_->limits, impl_->pending, impl_->pending_bytes,
                                             bytes, event->id, "for delivery");
        if (refused) {
            lock.unlock();
            done(std::move(*refused));
            return;
        }
        ++impl_->pending;
        impl_->pending_bytes += bytes;
        impl_->deliveries += handlers.size();
    }
    auto remaining = std::make_shared<std::atomic<std::size_t>>(handlers.size());
    for (auto& handler : handlers) {
        const std::string name = handler->name();
        impl_->pool.run(
            event, std::move(handler),
            [impl = impl_, event, name, remaining, bytes](DeliveryOutcome outcome, double ms) {
                const auto status = outcome.ok ? "delivered" : "failed";
                log_delivery(*event, name, 1, outcome, status, ms);
                if (impl->metrics) impl->metrics->delivery(name, status, ms / 1000);
                std::lock_guard lock(impl->mutex);
                --impl->deliveries;
                if (remaining->fetch_sub(1) != 1) return;
                impl->pending_bytes -= bytes;
                if (--impl->pending == 0) impl->idle.notify_all();
            });
    }
    done({SubmitResult::Status::accepted, event->id, {}});
}

void Dispatcher::set_pending_limits(PendingLimits limits) {
    std::lock_guard lock(impl_->mutex);
    impl_->limits = limits;
}

std::uint64_t Dispatcher::pending_events() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->pending;
}

SinkStats Dispatcher::stats() const {
    std::lock_guard lock(impl_->mutex);
    return {impl_->deliveries, 0};
}

bool Dispatcher::wait_idle(std::chrono::milliseconds timeout) {
    std::unique_lock lock(impl_->mutex);
    return impl_->idle.wait_for(lock, timeout, [&] { return impl_->pending == 0; });
}

void Dispatcher::stop(std::chrono::milliseconds timeout, const std::function<void()>& on_timeout,
                      std::chrono::milliseconds terminate_wait) {
    {
        std::lock_guard lock(impl_->mutex);
        if (impl_->stopped) return;
        impl_->stopped = true;
    }
    if (!wait_idle(timeout) && on_timeout) {
        on_timeout();
        wait_idle(terminate_wait);
    }
    // Without a spool, queued deliveries exist only here: finish them rather than lose them,
    // unless one never returns (a hung handler).
    if (!impl_->pool.stop_within(terminate_wait)) {
        std::lock_guard lock(impl_->mutex);
        // Without a spool, what was not done is gone.
        log::error(DeliveryPool::never_returned,
                   {{"deliveries", impl_->deliveries}, {"lost", true}});
    }
}

}  // namespace sigsci
