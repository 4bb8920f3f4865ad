#include "sigsci/delivery.hpp"

#include "sigsci/threads.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

namespace sigsci {

namespace {
// What a batch of events holds in bodies (DeliveryPool::max_batch_bytes).
std::size_t body_bytes(const std::vector<EventPtr>& events) {
    std::size_t n = 0;
    for (const auto& e : events) n += e->body.size();
    return n;
}
}  // namespace

// An io_context run by threads of our own (not asio::thread_pool, whose threads cannot be named).
// Each handler's jobs run one at a time, in the order given: a handler that hangs (a `file` on a
// stuck mount) then holds one thread, and the others go on serving every other handler. The jobs
// that queued behind a handler's running one go to it as one batch when it is done.
struct DeliveryPool::Impl {
    using BatchDone = std::function<void(std::size_t, DeliveryOutcome, double)>;
    struct Job {
        std::vector<EventPtr> events;
        HandlerPtr handler;
        BatchDone done;
    };

    explicit Impl(unsigned threads)
        : thread_count(std::max(1u, threads)), pool(static_cast<int>(thread_count)) {}

    // Each thread holds the pool's state, so one left running by stop_within() keeps it alive.
    static void start(const std::shared_ptr<Impl>& self) {
        for (unsigned i = 0; i < self->thread_count; ++i) {
            // Deliveries come after the answer: they yield the core to the request path.
            auto& worker = self->workers.emplace_back([self, i] {
                run_as_background();
                self->pool.run();
                std::lock_guard lock(self->mutex);
                self->finished[i] = true;
                self->changed.notify_all();
            });
            name_thread(worker, "sigsci-deliver");
        }
    }
    const unsigned thread_count;
    boost::asio::io_context pool;
    std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work{
        pool.get_executor()};
    std::vector<std::thread> workers;
    std::once_flag stopped;

    std::mutex mutex;
    std::condition_variable changed;  // a thread finished, or (once stopping) a job began or ended
    std::vector<bool> finished = std::vector<bool>(thread_count, false);  // under mutex
    unsigned executing = 0;                                               // under mutex
    std::atomic<bool> stopping{false};
    // Given up on by stop_within(): the jobs not begun yet are dropped. Each holds what its
    // callback needs, and running them would keep the pool's state alive for ever.
    std::atomic<bool> dropping{false};

    bool all_finished() const {  // under mutex
        return std::all_of(finished.begin(), finished.end(), [](bool f) { return f; });
    }

    // Per handler with a job queued or running: the jobs waiting behind that one (under mutex).
    // The key stays valid while it is here, since each job holds its handler.
    std::unordered_map<const Handler*, std::deque<Job>> busy;

    void submit(Job job) {
        const Handler* handler = job.handler.get();
        {
            std::lock_guard lock(mutex);
            auto [it, idle] = busy.try_emplace(handler);
            if (!idle) {
                it->second.push_back(std::move(job));
                return;
            }
        }
        post(handler, std::move(job));
    }

    // The jobs queued behind one as one job, up to max_batch_events and max_batch_bytes (a
    // handler that was stuck for a while does not get everything at once): their events in
    // order, each outcome reported to the job it came from, under that job's own index.
    static Job merge(std::deque<Job>& queued) {
        Job first = std::move(queued.front());
        queued.pop_front();
        std::size_t bytes = body_bytes(first.events);
        if (queued.empty() || first.events.size() >= max_batch_events || bytes >= max_batch_bytes) {
            return first;
        }
        Job merged{{}, first.handler, {}};
        std::vector<std::pair<std::size_t, BatchDone>> parts;  // (first index, its done)
        const auto take = [&](Job& job) {
            parts.emplace_back(merged.events.size(), std::move(job.done));
            merged.events.insert(merged.events.end(), std::make_move_iterator(job.events.begin()),
                                 std::make_move_iterator(job.events.end()));
        };
        take(first);
        while (!queued.empty()) {
            const auto more = body_bytes(queued.front().events);
            if (merged.events.size() + queued.front().events.size() > max_batch_events ||
                bytes + more > max_batch_bytes) {
                break;
            }
            bytes += more;
            take(queued.front());
            queued.pop_front();
        }
        merged.done = [parts = std::move(parts)](std::size_t i, DeliveryOutcome outcome,
                                                 double ms) {
            const auto part = std::prev(
                std::upper_bound(parts.begin(), parts.end(), i,
                                 [](std::size_t index, const auto& p) { return index < p.first; }));
            part->second(i - part->first, std::move(outcome), ms);
        };
        return merged;
    }

    static void execute(const Job& job) {
        const auto started = std::chrono::steady_clock::now();
        // A handler may call back and then throw; only the first report of each event counts.
        auto reported = std::make_shared<std::vector<std::atomic<bool>>>(job.events.size());
        auto once = [reported, started, done = job.done](std::size_t i, DeliveryOutcome outcome) {
            if ((*reported)[i].exchange(true)) return;
            const double ms = std::chrono::duration<double, std::milli>(
                                  std::chrono::steady_clock::now() - started)
                                  .count();
            done(i, std::move(outcome), ms);
        };
        try {
            job.handler->deliver_batch(job.events, once);
        } catch (const std::exception& e) {
            for (std::size_t i = 0; i < job.events.size(); ++i) {
                once(i, {false, std::string("handler threw: ") + e.what()});
            }
        }
    }

    // The next job of a handler goes to the back of the pool's queue rather than running on
    // this thread, so a busy handler cannot keep a thread from the others.
    void post(const Handler* handler, Job job) {
        boost::asio::post(pool, [this, handler, job = std::move(job)] {
            const bool run = !dropping.load();
            if (run) {
                std::lock_guard lock(mutex);
                count_executing(+1);
            }
            try {
                if (run) execute(job);
            } catch (...) {
                after(handler, run);
                throw;
            }
            after(handler, run);
        });
    }

    void count_executing(int step) {  // under mutex
        executing += step;
        if (stopping.load()) changed.notify_all();
    }

    // A job of `handler` has run (or been dropped): start what queued behind it, if anything,
    // as one job.
    void after(const Handler* handler, bool ran) {
        Job job;
        {
            std::lock_guard lock(mutex);
            if (ran) count_executing(-1);
            const auto it = busy.find(handler);
            if (it->second.empty()) {
                busy.erase(it);
                return;
            }
            job = merge(it->second);
        }
        post(handler, std::move(job));
    }
};

DeliveryPool::DeliveryPool(unsigned threads) : impl_(std::make_shared<Impl>(threads)) {
    Impl::start(impl_);
}

DeliveryPool::~DeliveryPool() {
    stop();
}

void DeliveryPool::run(EventPtr event, HandlerPtr handler,
                       std::function<void(DeliveryOutcome, double)> done) {
    run_batch({std::move(event)}, std::move(handler),
              [done = std::move(done)](std::size_t, DeliveryOutcome outcome, double ms) {
                  done(std::move(outcome), ms);
              });
}

void DeliveryPool::run_batch(std::vector<EventPtr> events, HandlerPtr handler,
                             std::function<void(std::size_t, DeliveryOutcome, double)> done) {
    if (events.size() == 1 || body_bytes(events) <= max_batch_bytes) {
        impl_->submit({std::move(events), std::move(handler), std::move(done)});
        return;
    }
    // In parts of at most max_batch_bytes (one event at least), which the handler gets one
    // after another; each outcome still reaches `done` under its index in `events`.
    const auto shared = std::make_shared<Impl::BatchDone>(std::move(done));
    for (std::size_t begin = 0; begin < events.size();) {
        std::size_t end = begin + 1;
        std::size_t bytes = events[begin]->body.size();
        while (end < events.size() && bytes + events[end]->body.size() <= max_batch_bytes) {
            bytes += events[end]->body.size();
            ++end;
        }
        std::vector<EventPtr> part(std::make_move_iterator(events.begin() + begin),
                                   std::make_move_iterator(events.begin() + end));
        impl_->submit({std::move(part), handler,
                       [shared, begin](std::size_t i, DeliveryOutcome outcome, double ms) {
                           (*shared)(begin + i, std::move(outcome), ms);
                       }});
        begin = end;
    }
}

void DeliveryPool::stop() {
    stop_within(std::chrono::milliseconds::max());
}

bool DeliveryPool::stop_within(std::chrono::milliseconds timeout) {
    std::call_once(impl_->stopped, [&] {
        auto& impl = *impl_;
        impl.stopping = true;
        // Finish what is queued: the work guard alone kept the threads waiting.
        impl.work.reset();
        std::unique_lock lock(impl.mutex);
        const auto done = [&] { return impl.all_finished(); };
        if (timeout == std::chrono::milliseconds::max()) {
            impl.changed.wait(lock, done);
        } else if (!impl.changed.wait_for(lock, timeout, done)) {
            // Past the deadline, threads with nothing running still finish by themselves; a job
            // that is running is given up on. It keeps every thread in run(), so the threads not
            // finished are left to the process's exit (each holds the pool's state).
            impl.changed.wait(lock, [&] { return done() || impl.executing > 0; });
            if (!done()) impl.dropping = true;
        }
        for (unsigned i = 0; i < impl.thread_count; ++i) {
            if (impl.finished[i]) {
                lock.unlock();
                impl.workers[i].join();
                lock.lock();
            } else {
                impl.workers[i].detach();
            }
        }
    });
    return !impl_->dropping.load();
}

void log_delivery(const Event& event, const std::string& handler, int attempt,
                  const DeliveryOutcome& outcome, std::string_view status, double duration_ms,
                  const log::Fields& extra) {
    const auto level = outcome.ok ? log::Level::info : log::Level::error;
    if (!log::enabled(level)) return;  // before building the fields: this is on the hot path
    log::Fields fields{
        {"event_id", event.id},
        {"endpoint", event.endpoint},
        {"type", event.envelope.type},
        {"handler", handler},
        {"attempt", attempt},
        {"status", status},
        {"duration_ms", static_cast<double>(static_cast<long>(duration_ms * 1000)) / 1000}};
    if (!outcome.ok) fields["error"] = outcome.error;
    for (const auto& [key, value] : outcome.details.items()) fields[key] = value;
    for (const auto& [key, value] : extra.items()) fields[key] = value;
    log::write(level, "delivery", fields);
}

}  // namespace sigsci
