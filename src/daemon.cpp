#include "sigsci/daemon.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <mutex>
#include <thread>

#include "sigsci/dispatcher.hpp"
#include "sigsci/log.hpp"
#include "sigsci/metrics.hpp"
#include "sigsci/server.hpp"
#include "sigsci/spool_sink.hpp"
#include "sigsci/systemd.hpp"
#include "sigsci/threads.hpp"
#include "sigsci/webhook_service.hpp"

namespace sigsci {

namespace asio = boost::asio;

namespace {

void log_warnings(const Config& config) {
    for (const auto& w : config.warnings) log::warn("config warning", {{"warning", w}});
}

// The signals run_until_signalled() handles.
sigset_t handled_signals() {
    sigset_t set;
    sigemptyset(&set);
    for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&set, s);
    return set;
}

PendingLimits pending_limits(const Limits& limits) {
    return {limits.max_pending_events, limits.max_pending_bytes};
}

bool same_listeners(const Config& a, const Config& b) {
    if (a.listen.size() != b.listen.size() || a.threads != b.threads) return false;
    if (!(a.admin == b.admin)) return false;
    for (std::size_t i = 0; i < a.listen.size(); ++i) {
        if (a.listen[i].address != b.listen[i].address) return false;
    }
    return true;
}

}  // namespace

struct Daemon::Impl {
    explicit Impl(Config config)
        : threads(config.effective_threads()),
          ioc(static_cast<int>(threads)),
          work(asio::make_work_guard(ioc)),
          service(Runtime::build(std::move(config))),
          server(ioc, service, threads) {
        const auto runtime = service.snapshot();
        const auto& cfg = runtime->config;
        const unsigned delivery_threads = std::max(2u, threads);
        if (cfg.spool.enabled) {
            // Retries and resumed deliveries look their handler up in the config of the moment.
            sink = std::make_unique<SpoolSink>(
                cfg.spool, delivery_threads, pending_limits(cfg.limits),
                [this](const std::string& name) -> HandlerPtr {
                    const auto rt = service.snapshot();
                    const auto it = rt->handlers.find(name);
                    return it == rt->handlers.end() ? nullptr : it->second;
                },
                &metrics);
        } else {
            log::warn("config warning", {{"warning",
                                          "spool.enabled is false: events live in memory "
                                          "until delivered and are lost if the process dies"}});
            sink = std::make_unique<Dispatcher>(delivery_threads, pending_limits(cfg.limits),
                                                &metrics);
        }
        service.attach(*sink, &metrics);
    }

    // The one-line summary systemd shows in `systemctl status`.
    std::string status_line() const {
        const auto st = sink->stats();
        return "STATUS=requests " + std::to_string(metrics.requests()) + ", deliveries " +
               std::to_string(metrics.deliveries()) + ", backlog " + std::to_string(st.backlog) +
               ", dead " + std::to_string(st.dead) + ", connections " +
               std::to_string(metrics.open_connections());
    }

    // Runs on the I/O loop, so a wedged loop stops petting the watchdog and systemd restarts us.
    void schedule_tick(std::chrono::milliseconds period, bool watchdog) {
        tick_timer.expires_after(period);
        tick_timer.async_wait([this, period, watchdog](const boost::system::error_code& ec) {
            if (ec) return;
            systemd::notify(watchdog ? "WATCHDOG=1\n" + status_line() : status_line());
            schedule_tick(period, watchdog);
        });
    }

    unsigned threads;
    asio::io_context ioc;
    asio::executor_work_guard<asio::io_context::executor_type> work;
    asio::steady_timer tick_timer{ioc};
    Metrics metrics;  // outlives the sink and the service, which count into it
    WebhookService service;
    Server server;
    std::unique_ptr<EventSink> sink;  // the spool, or the in-memory dispatcher
    std::vector<std::thread> io_threads;
    std::mutex reload_mutex;  // one reload at a time
    bool started = false;

    // Guards what follows. A reload applies its config and shutdown begins one after the other,
    // so that shutdown sees every handler that can still be delivering.
    std::mutex state_mutex;
    bool stopping = false;                        // shutdown() has begun
    std::vector<std::weak_ptr<Handler>> retired;  // handlers a reload replaced, while they live
    // SIGHUP's reloads run on a thread of their own (run_until_signalled), off the thread that
    // handles signals: a reload stuck on a hung file (open() on a hung mount) must not keep
    // SIGTERM from being handled.
    std::thread reloader;
    std::condition_variable reload_cv;
    bool reload_wanted = false;
    bool reload_running = false;
    bool reloader_done = false;

    bool reload(Result<Config> next);
    bool reload_locked(Result<Config> next);
    bool reload_from_file() { return reload(load_config(service.snapshot()->config.file)); }

    // Runs with the signals blocked (run_until_signalled): an interrupted open() here would
    // fail a reload.
    void reload_loop() {
        std::unique_lock lock(state_mutex);
        while (!stopping) {
            if (!reload_wanted) {
                reload_cv.wait(lock);
                continue;
            }
            reload_wanted = false;
            reload_running = true;
            lock.unlock();
            log::info("reloading");  // with `reloaded` or `reload failed` once it ends
            reload_from_file();
            lock.lock();
            reload_running = false;
        }
        reloader_done = true;
        reload_cv.notify_all();
    }

    // SIGHUPs that come while a reload runs are folded into one more reload after it.
    void request_reload() {
        std::lock_guard lock(state_mutex);
        if (reload_running) log::warn("a reload is still running; another follows it");
        reload_wanted = true;
        reload_cv.notify_all();
    }

    // A reload still running when the daemon has stopped gets `wait` more, then is left to
    // the process's exit: the thread holds this Impl, so nothing it uses goes away under it.
    void stop_reloader(std::chrono::milliseconds wait) {
        if (!reloader.joinable()) return;
        std::unique_lock lock(state_mutex);
        const bool done = reload_cv.wait_for(lock, wait, [&] { return reloader_done; });
        lock.unlock();
        if (done) {
            reloader.join();
        } else {
            log::warn("a reload never finished; stopping without it");
            reloader.detach();
        }
    }

    // Every handler that can still be delivering: the current ones and those that reloads
    // retired while a delivery still holds them (an exec command, a forward in flight).
    std::vector<HandlerPtr> live_handlers() {
        std::vector<HandlerPtr> out;
        for (const auto& [name, handler] : service.snapshot()->handlers) out.push_back(handler);
        std::lock_guard lock(state_mutex);
        for (const auto& weak : retired) {
            if (auto handler = weak.lock()) out.push_back(std::move(handler));
        }
        return out;
    }
};

Daemon::Daemon(Config config) : impl_(std::make_shared<Impl>(std::move(config))) {}

Daemon::~Daemon() {
    shutdown();
}

void Daemon::start() {
    const auto runtime = impl_->service.snapshot();
    const auto& cfg = runtime->config;
    // Sockets passed by systemd take the place of the configured addresses of their kind.
    bool passed_webhook = false;
    bool passed_admin = false;
    for (const auto& s : systemd::listen_fds()) {
        const auto role = s.name == "admin" ? Listener::admin : Listener::webhook;
        impl_->server.adopt(s.fd, role);
        (role == Listener::admin ? passed_admin : passed_webhook) = true;
    }
    if (passed_webhook) {
        log::info("socket activation: using the sockets systemd passed instead of \"listen\"");
    } else {
        impl_->server.listen(cfg.listen);
    }
    if (!passed_admin) impl_->server.listen(cfg.admin.listen, Listener::admin);
    impl_->server.start_accepting();
    for (unsigned i = 0; i < impl_->threads; ++i) {
        auto& t = impl_->io_threads.emplace_back([this] { impl_->ioc.run(); });
        name_thread(t, impl_->threads == 1 ? "sigsci-io" : "sigsci-io-" + std::to_string(i));
    }
    impl_->started = true;
    impl_->service.set_ready(true);
    log::info("ready", {{"version", SIGSCI_VERSION},
                        {"threads", impl_->threads},
                        {"endpoints", cfg.endpoints.size()},
                        {"handlers", cfg.handlers.size()}});
    systemd::notify("READY=1\n" + impl_->status_line());
    if (const auto interval = systemd::watchdog_interval()) {
        const auto period =
            std::max(std::chrono::milliseconds(1),
                     std::chrono::duration_cast<std::chrono::milliseconds>(*interval));
        log::info("watchdog", {{"interval_ms", period.count()}});
        impl_->schedule_tick(period, true);
    } else if (std::getenv("NOTIFY_SOCKET") != nullptr) {
        impl_->schedule_tick(std::chrono::seconds(5), false);  // STATUS= only
    }
}

std::vector<std::string> Daemon::bound_addresses() const {
    return impl_->server.bound_addresses();
}
std::vector<std::uint16_t> Daemon::ports() const {
    return impl_->server.ports();
}
std::vector<std::uint16_t> Daemon::admin_ports() const {
    return impl_->server.ports(Listener::admin);
}

bool Daemon::reload() {
    return impl_->reload_from_file();
}

bool Daemon::reload(Result<Config> next) {
    return impl_->reload(std::move(next));
}

bool Daemon::Impl::reload(Result<Config> next) {
    std::lock_guard lock(reload_mutex);
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    systemd::notify("RELOADING=1\nMONOTONIC_USEC=" +
                    std::to_string(static_cast<std::uint64_t>(now.tv_sec) * 1000000u +
                                   static_cast<std::uint64_t>(now.tv_nsec) / 1000u));
    const bool ok = reload_locked(std::move(next));
    metrics.reload(ok);
    // Ready again either way (a rejected config leaves the old one serving), unless stopping.
    bool stopping_now = false;
    {
        std::lock_guard state(state_mutex);
        stopping_now = stopping;
    }
    if (!stopping_now) systemd::notify("READY=1\n" + status_line());
    return ok;
}

bool Daemon::Impl::reload_locked(Result<Config> next) {
    const auto current = service.snapshot();
    auto keep_old = [&](const std::string& why) {
        log::error("reload failed", {{"error", why}, {"config", current->config.file.string()}});
        for (const auto& [name, handler] : current->handlers) handler->reopen();
        return false;
    };
    if (!next) return keep_old(next.error());
    std::shared_ptr<const Runtime> runtime;
    try {
        runtime = Runtime::build(std::move(next).value());
    } catch (const std::exception& e) {
        return keep_old(e.what());
    }
    const Config& cfg = runtime->config;
    {
        std::lock_guard lock(state_mutex);
        if (stopping) {
            log::warn("reload dropped: the daemon is stopping", {{"config", cfg.file.string()}});
            return false;
        }
        std::erase_if(retired, [](const auto& handler) { return handler.expired(); });
        for (const auto& [name, handler] : current->handlers) retired.push_back(handler);
        service.replace(runtime);
    }
    log_warnings(cfg);
    if (!(cfg.spool == current->config.spool)) {
        log::warn("config warning", {{"warning", "changes to spool take effect at restart"}});
    }
    if (!same_listeners(current->config, cfg)) {
        log::warn("config warning",
                  {{"warning", "changes to listen and threads take effect at restart"}});
    }
    log::set_format(cfg.log.format);
    log::set_level(cfg.log.level);
    sink->set_pending_limits(pending_limits(cfg.limits));
    server.reload_tls(cfg.listen);
    log::info("reloaded", {{"config", cfg.file.string()},
                           {"endpoints", cfg.endpoints.size()},
                           {"handlers", cfg.handlers.size()}});
    return true;
}

void Daemon::shutdown() {
    if (!impl_->started) return;
    {
        std::lock_guard lock(impl_->state_mutex);
        if (impl_->stopping) return;
        impl_->stopping = true;  // no reload applies from here on, and none starts
        impl_->reload_cv.notify_all();
    }
    systemd::notify("STOPPING=1");
    asio::post(impl_->ioc, [this] { impl_->tick_timer.cancel(); });
    const auto drain = impl_->service.snapshot()->config.limits.drain_timeout;
    const auto deadline = std::chrono::steady_clock::now() + drain;
    log::info("stopping", {{"drain_timeout_ms", drain.count()}});
    impl_->service.set_ready(false);
    impl_->server.stop_accepting();
    if (!impl_->server.wait_connections_closed(drain)) {
        log::warn("drain timeout: closing connections",
                  {{"connections", impl_->server.connection_count()}});
        impl_->server.close_all();
        impl_->server.wait_connections_closed(std::chrono::seconds(1));
    }
    const auto left = std::max(std::chrono::milliseconds(0),
                               std::chrono::duration_cast<std::chrono::milliseconds>(
                                   deadline - std::chrono::steady_clock::now()));
    // Deliveries still running when the drain period ends (exec commands) are ended, those of
    // handlers retired by a reload too.
    impl_->sink->stop(left, [this] {
        for (const auto& handler : impl_->live_handlers()) handler->terminate();
    });
    impl_->work.reset();
    impl_->ioc.stop();
    for (auto& t : impl_->io_threads) t.join();
    impl_->io_threads.clear();
    impl_->stop_reloader(std::chrono::seconds(1));
    log::info("stopped");
}

void Daemon::block_signals() {
    const auto handled = handled_signals();
    pthread_sigmask(SIG_BLOCK, &handled, nullptr);
}

void Daemon::run_until_signalled() {
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<int> received;
    asio::signal_set signals(impl_->ioc, SIGINT, SIGTERM, SIGHUP);
    std::function<void(const boost::system::error_code&, int)> on_signal =
        [&](const boost::system::error_code& ec, int signo) {
            if (ec) return;
            {
                std::lock_guard lock(mutex);
                received.push_back(signo);
            }
            cv.notify_one();
            if (signo == SIGHUP) signals.async_wait(on_signal);
        };
    signals.async_wait(on_signal);
    // The threads started here inherit the signals blocked, so that only this thread takes
    // them. run_daemon() has them blocked already (see cli.cpp); other callers get the same.
    block_signals();
    start();
    impl_->reloader = std::thread([impl = impl_] { impl->reload_loop(); });
    name_thread(impl_->reloader, "sigsci-reload");
    // The handler is in place and every thread started: let the signals held back through.
    const auto handled = handled_signals();
    pthread_sigmask(SIG_UNBLOCK, &handled, nullptr);
    for (;;) {
        int signo = 0;
        {
            std::unique_lock lock(mutex);
            cv.wait(lock, [&] { return !received.empty(); });
            signo = received.front();
            received.pop_front();
        }
        if (signo != SIGHUP) {
            log::info("signal", {{"signal", signo == SIGTERM ? "SIGTERM" : "SIGINT"}});
            break;
        }
        log::info("signal", {{"signal", "SIGHUP"}});
        impl_->request_reload();
    }
    signals.cancel();
    shutdown();
}

bool Daemon::wait_deliveries_idle(std::chrono::milliseconds timeout) {
    return impl_->sink->wait_idle(timeout);
}

std::size_t Daemon::connection_count() const {
    return impl_->server.connection_count();
}

}  // namespace sigsci
