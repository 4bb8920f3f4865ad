#include "sigsci/dispatcher.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <condition_variable>
#include <mutex>

#include "sigsci/log.hpp"

namespace sigsci {

struct Dispatcher::Impl : std::enable_shared_from_this<Impl> {
    Impl(unsigned threads, std::uint64_t max_pending)
        : pool(threads), max_pending_events(max_pending) {}

    boost::asio::thread_pool pool;
    std::atomic<std::uint64_t> max_pending_events;
    std::mutex mutex;
    std::condition_variable idle;
    std::uint64_t pending = 0;  // events with a delivery still running; guarded by mutex
    bool stopped = false;

    void finish_event() {
        std::lock_guard lock(mutex);
        if (--pending == 0) idle.notify_all();
    }

    void run_delivery(const EventPtr& event, const HandlerPtr& handler,
                      const std::shared_ptr<std::atomic<std::size_t>>& remaining) {
        const auto started = std::chrono::steady_clock::now();
        auto self = shared_from_this();
        // A handler may call done and then throw; only the first report counts.
        auto reported = std::make_shared<std::atomic<bool>>(false);
        auto done = [self, event, handler, remaining, started, reported](DeliveryOutcome outcome) {
            if (reported->exchange(true)) return;
            const double ms = std::chrono::duration<double, std::milli>(
                                  std::chrono::steady_clock::now() - started)
                                  .count();
            log::Fields fields{
                {"event_id", event->id},
                {"endpoint", event->endpoint},
                {"type", event->envelope.type},
                {"handler", handler->name()},
                {"attempt", 1},
                {"status", outcome.ok ? "delivered" : "failed"},
                {"duration_ms", static_cast<double>(static_cast<long>(ms * 1000)) / 1000}};
            if (!outcome.ok) fields["error"] = outcome.error;
            log::write(outcome.ok ? log::Level::info : log::Level::error, "delivery", fields);
            if (remaining->fetch_sub(1) == 1) self->finish_event();
        };
        try {
            handler->deliver(event, done);
        } catch (const std::exception& e) {
            // A handler that throws has not called done; report for it.
            done({false, std::string("handler threw: ") + e.what()});
        }
    }
};

Dispatcher::Dispatcher(unsigned threads, std::uint64_t max_pending_events)
    : impl_(std::make_shared<Impl>(threads == 0 ? 1 : threads, max_pending_events)) {}

Dispatcher::~Dispatcher() {
    stop();
}

bool Dispatcher::submit(const EventPtr& event, std::vector<HandlerPtr> handlers) {
    if (handlers.empty()) return true;
    {
        std::lock_guard lock(impl_->mutex);
        if (impl_->stopped || impl_->pending >= impl_->max_pending_events.load()) return false;
        ++impl_->pending;
    }
    auto remaining = std::make_shared<std::atomic<std::size_t>>(handlers.size());
    for (auto& handler : handlers) {
        boost::asio::post(impl_->pool,
                          [impl = impl_, event, handler = std::move(handler), remaining] {
                              impl->run_delivery(event, handler, remaining);
                          });
    }
    return true;
}

void Dispatcher::set_max_pending_events(std::uint64_t n) {
    impl_->max_pending_events.store(n);
}

std::uint64_t Dispatcher::pending_events() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->pending;
}

bool Dispatcher::wait_idle(std::chrono::milliseconds timeout) {
    std::unique_lock lock(impl_->mutex);
    return impl_->idle.wait_for(lock, timeout, [&] { return impl_->pending == 0; });
}

void Dispatcher::stop() {
    {
        std::lock_guard lock(impl_->mutex);
        if (impl_->stopped) return;
        impl_->stopped = true;
    }
    impl_->pool.join();
}

}  // namespace sigsci
