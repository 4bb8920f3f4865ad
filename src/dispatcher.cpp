#include "sigsci/dispatcher.hpp"

#include <atomic>
#include <condition_variable>
#include <mutex>

#include "sigsci/log.hpp"
#include "sigsci/metrics.hpp"

namespace sigsci {

struct Dispatcher::Impl {
    Impl(unsigned threads, std::uint64_t max_pending, Metrics* m)
        : pool(threads), max_pending_events(max_pending), metrics(m) {}

    DeliveryPool pool;
    std::atomic<std::uint64_t> max_pending_events;
    Metrics* const metrics;
    mutable std::mutex mutex;
    std::condition_variable idle;
    std::uint64_t pending = 0;     // events with a delivery still running; guarded by mutex
    std::uint64_t deliveries = 0;  // deliveries not yet done; guarded by mutex
    bool stopped = false;
};

Dispatcher::Dispatcher(unsigned threads, std::uint64_t max_pending_events, Metrics* metrics)
    : impl_(std::make_shared<Impl>(threads, max_pending_events, metrics)) {}

Dispatcher::~Dispatcher() {
    stop(std::chrono::milliseconds(0));
}

void Dispatcher::submit(const EventPtr& event, std::vector<HandlerPtr> handlers, SubmitDone done) {
    if (!handlers.empty()) {
        std::unique_lock lock(impl_->mutex);
        if (impl_->stopped || impl_->pending >= impl_->max_pending_events.load()) {
            lock.unlock();
            done({SubmitResult::Status::overloaded, event->id,
                  "too many events waiting for delivery"});
            return;
        }
        ++impl_->pending;
        impl_->deliveries += handlers.size();
    }
    auto remaining = std::make_shared<std::atomic<std::size_t>>(handlers.size());
    for (auto& handler : handlers) {
        const std::string name = handler->name();
        impl_->pool.run(event, std::move(handler),
                        [impl = impl_, event, name, remaining](DeliveryOutcome outcome, double ms) {
                            const auto status = outcome.ok ? "delivered" : "failed";
                            log_delivery(*event, name, 1, outcome, status, ms);
                            if (impl->metrics) impl->metrics->delivery(name, status, ms / 1000);
                            std::lock_guard lock(impl->mutex);
                            --impl->deliveries;
                            if (remaining->fetch_sub(1) == 1 && --impl->pending == 0) {
                                impl->idle.notify_all();
                            }
                        });
    }
    done({SubmitResult::Status::accepted, event->id, {}});
}

void Dispatcher::set_max_pending_events(std::uint64_t n) {
    impl_->max_pending_events.store(n);
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
