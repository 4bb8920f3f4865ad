#include "sigsci/exec_handler.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <csignal>
#include <cstring>
#include <thread>

#include "sigsci/handler_registry.hpp"
#include "sigsci/reactor.hpp"
#include "sigsci/threads.hpp"

namespace sigsci {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

constexpr const char* stopping_message = "the daemon is stopping; the command was not run";
constexpr const char* base_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
// After the command exits, how long its output pipes may stay open (held by something that left
// its process group) before they are closed on it.
constexpr auto output_drain_time = std::chrono::milliseconds(1000);

// glibc 2.36's <sys/pidfd.h> lacks extern "C" for C++, so call the (Linux 5.3+) syscall itself.
int open_pidfd(pid_t pid) {
    return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

bool is_template(const std::string& arg) {
    return arg.size() >= 3 && arg.front() == '{' && arg.back() == '}' && arg[1] == '/';
}

std::string json_text(const Json& value) {
    if (value.is_string()) return value.get<std::string>();
    if (value.is_null()) return "";
    return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string describe_signal(int sig) {
    const char* abbrev = sigabbrev_np(sig);
    return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

bool executable_file(const std::filesystem::path& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
}

// Every fd we make is close-on-exec, so nothing reaches the child but what posix_spawn dup2s.
bool make_pipe(int fds[2]) {
    return ::pipe2(fds, O_CLOEXEC) == 0;
}

struct Reactor {
    Reactor() {
        // A child that exits without reading its stdin must fail our write with EPIPE, not
        // kill the daemon.
        std::signal(SIGPIPE, SIG_IGN);
        thread = std::thread([this] { ioc.run(); });
        name_thread(thread, "handler-reactor");
    }
    asio::io_context ioc{1};
    asio::executor_work_guard<asio::io_context::executor_type> work{ioc.get_executor()};
    std::thread thread;
};
Reactor* reactor_instance = nullptr;  // set once, by handler_reactor()'s initialisation

// OpenSSL frees its global state at exit, and runs this first: the reactor thread may be
// releasing the last forward handler (its TLS context) at that very moment. Stop the thread,
// letting the handler it runs finish; what is still queued is never run nor destroyed.
void stop_reactor_at_exit() {
    auto& r = *reactor_instance;
    r.ioc.stop();
    if (r.thread.joinable() && r.thread.get_id() != std::this_thread::get_id()) r.thread.join();
}
}  // namespace

// The pipes and pidfds of every exec child, and every forward connection, are watched here.
asio::io_context& handler_reactor() {
    static Reactor* reactor = [] {
        auto* r = new Reactor;  // never destroyed, on purpose
        reactor_instance = r;
        OPENSSL_atexit(stop_reactor_at_exit);
        return r;
    }();
    return reactor->ioc;
}

Result<std::vector<std::string>> expand_argv(const std::vector<std::string>& command,
                                             const Json& envelope) {
    std::vector<std::string> argv;
    argv.reserve(command.size());
    for (std::size_t i = 0; i < command.size(); ++i) {
        const auto& arg = command[i];
        if (!is_template(arg)) {
            argv.push_back(arg);
            continue;
        }
        const auto pointer = arg.substr(1, arg.size() - 2);
        const Json::json_pointer ptr(pointer);  // syntax was checked when the config was loaded
        if (!envelope.contains(ptr)) {
            return Error{"command[" + std::to_string(i) + "]: " + pointer + " is not in the event"};
        }
        argv.push_back(json_text(envelope.at(ptr)));
    }
    return argv;
}

std::vector<std::string> child_environment(const Event& event,
                                           const std::map<std::string, std::string>& env) {
    std::map<std::string, std::string> vars{
        {"PATH", base_path},
        {"LANG", "C.UTF-8"},
        {"SIGSCI_EVENT_ID", event.id},
        {"SIGSCI_TYPE", event.envelope.type},
        {"SIGSCI_CREATED", json_text(event.created())},
        {"SIGSCI_LINK", json_text(event.link())},
        {"SIGSCI_ENDPOINT", event.endpoint},
    };
    for (const auto& [k, v] : env) vars[k] = v;
    std::vector<std::string> out;
    for (const auto& [k, v] : vars) out.push_back(k + "=" + v);
    return out;
}

struct ExecHandler::Job : std::enable_shared_from_this<Job> {
    explicit Job(asio::io_context& ioc)
        : strand(asio::make_strand(ioc)),
          in(strand),
          out(strand),
          err(strand),
          pidfd(strand),
          timer(strand),
          drain(strand) {}

    // Held until the job finishes: a reload retires the handler, but the deliveries it is
    // running and those waiting for a slot still need it (to start the next one).
    std::shared_ptr<ExecHandler> handler;
    EventPtr event;
    std::vector<std::string> argv;
    std::vector<std::string> envp;
    DeliveryDone done;

    asio::strand<asio::io_context::executor_type> strand;
    asio::posix::stream_descriptor in, out, err, pidfd;
    asio::steady_timer timer, drain;
    pid_t pid = -1;
    struct Capture {
        std::string kept;
        std::size_t total = 0;
        std::array<char, 16384> chunk{};
    } out_capture, err_capture;
    int open_streams = 2;
    bool exited = false;
    int status = 0;
    std::string stopped_why;  // set when we signalled it: timeout or shutdown
    bool killed = false;      // needed SIGKILL
    bool completed = false;
    std::chrono::steady_clock::time_point started;

    void read_loop(asio::posix::stream_descriptor& stream, Capture& cap) {
        stream.async_read_some(asio::buffer(cap.chunk), [self = shared_from_this(), &stream, &cap](
                                                            error_code ec, std::size_t n) {
            if (n > 0) {
                const auto room =
                    max_captured_output - std::min(max_captured_output, cap.kept.size());
                cap.kept.append(cap.chunk.data(), std::min(n, room));
                cap.total += n;
            }
            if (!ec) {
                self->read_loop(stream, cap);
                return;
            }
            --self->open_streams;
            self->maybe_complete();
        });
    }

    void on_exit() {
        if (::waitpid(pid, &status, WNOHANG) == pid) exited = true;
        if (!exited) {  // readable pidfd but not reaped: cannot happen for a child of ours
            ::waitpid(pid, &status, 0);
            exited = true;
        }
        timer.cancel();
        // Whatever the command left running in its process group goes with it; that also
        // closes the pipes they held.
        ::kill(-pid, SIGKILL);
        drain.expires_after(output_drain_time);
        drain.async_wait([self = shared_from_this()](error_code ec) {
            if (ec) return;
            error_code ignored;
            self->out.close(ignored);
            self->err.close(ignored);
        });
        maybe_complete();
    }

    void stop(std::string why, std::chrono::milliseconds grace) {
        if (exited || !stopped_why.empty()) return;
        stopped_why = std::move(why);
        ::kill(-pid, SIGTERM);
        timer.expires_after(grace);
        timer.async_wait([self = shared_from_this()](error_code ec) {
            if (ec || self->exited) return;
            self->killed = true;
            ::kill(-self->pid, SIGKILL);
        });
    }

    void maybe_complete() {
        if (!exited || open_streams > 0 || completed) return;
        completed = true;
        drain.cancel();
        timer.cancel();
        // Every descriptor is closed before the outcome is reported.
        error_code ignored;
        in.close(ignored);
        out.close(ignored);
        err.close(ignored);
        pidfd.close(ignored);
        finish(outcome());
    }

    DeliveryOutcome outcome() const {
        DeliveryOutcome o;
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::steady_clock::now() - started)
                            .count();
        if (WIFEXITED(status)) o.details["exit_code"] = WEXITSTATUS(status);
        if (WIFSIGNALED(status)) o.details["signal"] = describe_signal(WTERMSIG(status));
        auto output = [&](const char* name, const Capture& c) {
            if (c.total == 0) return;
            std::string text = c.kept;
            if (c.total > c.kept.size()) {
                text += "...[truncated: " + std::to_string(c.total) + " bytes in all]";
            }
            o.details[name] = text;
        };
        output("stdout", out_capture);
        output("stderr", err_capture);
        if (!stopped_why.empty()) {
            o.ok = false;
            o.error = stopped_why + " after " + std::to_string(ms) +
                      " ms; process group sent SIGTERM" + (killed ? ", then SIGKILL" : "");
        } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            o.ok = true;
        } else if (WIFEXITED(status)) {
            o.ok = false;
            o.error = "exit status " + std::to_string(WEXITSTATUS(status));
        } else {
            o.ok = false;
            o.error = "killed by " + describe_signal(WTERMSIG(status));
        }
        return o;
    }

    // The command never ran (or ran unwatched and was reaped at once): report why.
    void fail_to_start(std::string why) {
        exited = true;
        open_streams = 0;
        completed = true;
        finish({false, std::move(why), Json::object()});
    }

    void finish(DeliveryOutcome o) {
        auto cb = std::move(done);
        if (auto h = std::move(handler)) h->finished(shared_from_this());
        cb(std::move(o));
    }
};

ExecHandler::ExecHandler(std::string name, ExecConfig config)
    : Handler(std::move(name)), config_(std::move(config)) {
    handler_reactor();  // start it now, not inside the first delivery
}

std::size_t ExecHandler::running() const {
    std::lock_guard lock(mutex_);
    return running_;
}

void ExecHandler::deliver(const EventPtr& event, DeliveryDone done) {
    {
        std::unique_lock lock(mutex_);
        if (terminated_) {
            lock.unlock();
            done({false, stopping_message, Json::object()});
            return;
        }
        if (running_ >= config_.max_concurrent) {
            waiting_.push_back({event, std::move(done)});
            return;
        }
        ++running_;
    }
    if (!launch({event, std::move(done)})) finished(nullptr);
}

// In a slot counted in running_: makes the command and starts it. False when it was not started
// (its outcome reported), so the slot is free for the next.
bool ExecHandler::launch(Waiting w) {
    auto argv = expand_argv(config_.command, w.event->doc());
    if (!argv) {
        w.done({false, argv.error() + "; the command was not run", Json::object()});
        return false;
    }
    auto job = std::make_shared<Job>(handler_reactor());
    job->handler = shared_from_this();
    job->event = std::move(w.event);
    job->argv = std::move(argv).value();
    job->envp = child_environment(*job->event, config_.env);
    job->done = std::move(w.done);
    {
        std::unique_lock lock(mutex_);
        if (terminated_) {  // terminate() would not see it among the active
            lock.unlock();
            job->done({false, stopping_message, Json::object()});
            return false;
        }
        active_.push_back(job);
    }
    start(std::move(job));
    return true;
}

void ExecHandler::start(std::shared_ptr<Job> job) {
    asio::post(job->strand, [job, config = &config_] {
        job->started = std::chrono::steady_clock::now();
        int in[2], out[2], err[2];
        if (!make_pipe(in) || !make_pipe(out) || !make_pipe(err)) {
            job->fail_to_start(std::string("cannot create pipes: ") + std::strerror(errno));
            return;
        }
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, in[0], 0);
        posix_spawn_file_actions_adddup2(&actions, out[1], 1);
        posix_spawn_file_actions_adddup2(&actions, err[1], 2);
        // Belt and braces: whatever a library opened without O_CLOEXEC stays out of the child.
        posix_spawn_file_actions_addclosefrom_np(&actions, 3);
        if (!config->cwd.empty())
            posix_spawn_file_actions_addchdir_np(&actions, config->cwd.c_str());
        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        // Its own process group, so a timeout can stop it and everything it started; default
        // signal handling and an empty mask, whatever the daemon ignores or blocks.
        sigset_t all, none;
        sigfillset(&all);
        sigemptyset(&none);
        posix_spawnattr_setpgroup(&attr, 0);
        posix_spawnattr_setsigdefault(&attr, &all);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setflags(
            &attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
        std::vector<char*> argv, envp;
        for (auto& a : job->argv) argv.push_back(a.data());
        argv.push_back(nullptr);
        for (auto& e : job->envp) envp.push_back(e.data());
        envp.push_back(nullptr);
        const int rc = ::posix_spawn(&job->pid, argv[0], &actions, &attr, argv.data(), envp.data());
        posix_spawn_file_actions_destroy(&actions);
        posix_spawnattr_destroy(&attr);
        ::close(in[0]);
        ::close(out[1]);
        ::close(err[1]);
        const int pidfd = rc == 0 ? open_pidfd(job->pid) : -1;
        if (rc != 0 || pidfd < 0) {
            const std::string why = std::strerror(rc != 0 ? rc : errno);
            if (rc == 0) {  // spawned but cannot be watched: stop and reap it here
                ::kill(-job->pid, SIGKILL);
                ::waitpid(job->pid, nullptr, 0);
            }
            ::close(in[1]);
            ::close(out[0]);
            ::close(err[0]);
            job->fail_to_start("cannot start " + job->argv[0] + ": " + why);
            return;
        }
        job->in.assign(in[1]);
        job->out.assign(out[0]);
        job->err.assign(err[0]);
        job->pidfd.assign(pidfd);
        // The raw envelope on stdin, then EOF. A command that does not read it is fine.
        asio::async_write(job->in, asio::buffer(job->event->body), [job](error_code, std::size_t) {
            error_code ignored;
            job->in.close(ignored);
        });
        job->read_loop(job->out, job->out_capture);
        job->read_loop(job->err, job->err_capture);
        job->pidfd.async_wait(asio::posix::stream_descriptor::wait_read, [job](error_code ec) {
            if (!ec) job->on_exit();
        });
        job->timer.expires_after(config->timeout);
        job->timer.async_wait([job, grace = config->kill_grace,
                               timeout = config->timeout](error_code ec) {
            if (!ec)
                job->stop("timed out (timeout_ms " + std::to_string(timeout.count()) + ")", grace);
        });
    });
}

// A slot is free: `job` ended (or, null, a delivery never started). The slot goes to the next
// waiting delivery, if any.
void ExecHandler::finished(const std::shared_ptr<Job>& job) {
    for (;;) {
        Waiting next;
        {
            std::lock_guard lock(mutex_);
            if (job) {
                std::erase_if(active_, [&](const std::weak_ptr<Job>& w) {
                    const auto j = w.lock();
                    return !j || j == job;
                });
            }
            if (waiting_.empty() || terminated_) {
                --running_;
                return;
            }
            next = std::move(waiting_.front());
            waiting_.pop_front();
        }
        if (launch(std::move(next))) return;
    }
}

void ExecHandler::terminate() {
    std::deque<Waiting> waiting;
    std::vector<std::shared_ptr<Job>> active;
    {
        std::lock_guard lock(mutex_);
        terminated_ = true;
        waiting.swap(waiting_);
        for (const auto& w : active_) {
            if (auto j = w.lock()) active.push_back(std::move(j));
        }
    }
    for (auto& job : active) {
        asio::post(job->strand, [job, grace = config_.kill_grace] {
            if (job->pid > 0) job->stop("stopped at shutdown", grace);
        });
    }
    for (auto& w : waiting) w.done({false, stopping_message, Json::object()});
}

HandlerSpec parse_exec_handler(const std::string& name, ConfigObject& cfg,
                               const ConfigContext& ctx) {
    ExecConfig c;
    auto command_node = cfg.require("command");
    const auto items = command_node.as_array();
    if (items.empty()) command_node.fail("must name a program");
    for (const auto& item : items) {
        auto arg = item.as_nonempty_string();
        if (is_template(arg)) {
            try {
                Json::json_pointer check(arg.substr(1, arg.size() - 2));
            } catch (const Json::parse_error&) {
                item.fail("\"" + arg + "\" is not a valid JSON pointer template");
            }
        }
        c.command.push_back(std::move(arg));
    }
    // The program: absolute, relative to the config file, or looked up in the daemon's PATH now.
    std::filesystem::path program = c.command[0];
    if (is_template(c.command[0])) items[0].fail("the program cannot be a template");
    if (c.command[0].find('/') == std::string::npos) {
        const char* path_env = std::getenv("PATH");
        std::string dirs = path_env && *path_env ? path_env : base_path;
        std::filesystem::path found;
        for (std::size_t start = 0; start <= dirs.size();) {
            const auto end = std::min(dirs.find(':', start), dirs.size());
            const auto candidate = std::filesystem::path(dirs.substr(start, end - start)) / program;
            if (end > start && executable_file(candidate)) {
                found = candidate;
                break;
            }
            start = end + 1;
        }
        if (found.empty()) items[0].fail("\"" + c.command[0] + "\" is not found in PATH");
        program = found;
    } else if (program.is_relative()) {
        program = ctx.base_dir / program;
    }
    program = program.lexically_normal();
    if (!executable_file(program)) items[0].fail(program.string() + " is not an executable file");
    c.command[0] = program.string();
    if (auto n = cfg.get("timeout_ms"))
        c.timeout = std::chrono::milliseconds(n->as_uint(1, 86400000));
    if (auto n = cfg.get("kill_grace_ms"))
        c.kill_grace = std::chrono::milliseconds(n->as_uint(1, 600000));
    if (auto n = cfg.get("max_concurrent")) c.max_concurrent = n->as_uint(1, 1024);
    if (auto n = cfg.get("env")) {
        auto env = n->as_object();
        for (const auto& key : env.keys()) {
            auto value = env.require(key);
            if (key.empty() || key.find('=') != std::string::npos)
                value.fail("is not a valid variable name");
            c.env[key] = value.as_string();
        }
    }
    if (auto n = cfg.get("cwd")) {
        std::filesystem::path dir = n->as_nonempty_string();
        if (dir.is_relative()) dir = ctx.base_dir / dir;
        std::error_code ec;
        if (!std::filesystem::is_directory(dir, ec)) n->fail(dir.string() + " is not a directory");
        c.cwd = dir;
    }
    cfg.finish();
    std::string summary = c.command[0];
    for (std::size_t i = 1; i < c.command.size(); ++i) summary += " " + c.command[i];
    summary += " (timeout " + std::to_string(c.timeout.count()) + " ms, at most " +
               std::to_string(c.max_concurrent) + " at once)";
    return HandlerSpec{name, "exec", summary,
                       [name, c] { return std::make_shared<ExecHandler>(name, c); }};
}

}  // namespace sigsci
