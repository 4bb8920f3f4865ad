#include "sigsci/server.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <mutex>
#include <tuple>
#include <unordered_set>

#include "sigsci/completion_batch.hpp"
#include "sigsci/log.hpp"
#include "sigsci/metrics.hpp"
#include "sigsci/tls.hpp"
#include "sigsci/webhook_service.hpp"

namespace sigsci {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;
using boost::system::error_code;
namespace ssl = asio::ssl;
using namespace std::chrono_literals;

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
// How long and how much we keep reading after answering "Connection: close" while the client
// may still be sending: closing with unread input makes the kernel send RST, which can destroy
// the answer before the client reads it.
constexpr auto linger_time = 1000ms;
constexpr std::size_t linger_bytes = 1024 * 1024;
constexpr std::size_t path_log_chars = 256;

// See connection_limit_key().
std::string limit_key(const asio::ip::address& address) {
    if (address.is_v4()) return address.to_string();
    const auto v6 = address.to_v6();
    if (v6.is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, v6).to_string();
    auto bytes = v6.to_bytes();
    std::fill(bytes.begin() + 8, bytes.end(), 0);
    return asio::ip::address_v6(bytes, v6.scope_id()).to_string() + "/64";
}

// The admin listener is for a scraper or two, never a crowd.
constexpr std::size_t max_admin_connections = 64;

// One accepted socket. Its timer enforces deadlines without closing the socket (unlike
// beast::tcp_stream), so a slow client can still be told 408.
struct Connection : std::enable_shared_from_this<Connection> {
    Connection(tcp::socket s, Listener r, std::shared_ptr<ssl::context> t)
        : socket(std::move(s)), tls(std::move(t)), timer(socket.get_executor()), role(r) {
        error_code ec;
        const auto ep = socket.remote_endpoint(ec);
        if (ec) return;
        const auto addr = ep.address().to_string();
        remote_address =
            (ep.address().is_v6() ? "[" + addr + "]" : addr) + ":" + std::to_string(ep.port());
        remote_ip = limit_key(ep.address());
    }

    tcp::socket socket;
    std::shared_ptr<ssl::context> tls;  // the listener's context when it accepted; null: plain
    asio::steady_timer timer;
    const Listener role;
    bool timed_out = false;
    bool idle = false;  // waiting for the first byte of the next request
    std::string remote_address = "unknown";
    std::string remote_ip = "unknown";  // what the per-address cap counts (limit_key)
    // Body bytes this connection's client (remote_ip) holds unverified, shared by its webhook
    // connections. Set when a webhook connection is registered; only those read bodies (an
    // admin connection's requests are all answered from the head, route_admin).
    std::shared_ptr<std::atomic<std::uint64_t>> client_unverified;
    std::string output;  // the answer being written; capacity kept between them

    // Cancels whatever I/O is pending once `timeout` has passed; the deadline is total, not
    // per read, so bytes trickled one at a time do not extend it.
    //
    // A request arms and disarms three times (idle, request, answer). Doing each with the timer
    // cost about 1.5 µs per request on the I/O thread (docs/performance.md): a cancelled wait
    // still completes through the scheduler. So only the deadline is recorded here, and the
    // timer is touched only when the new deadline comes before the one it waits for. When it
    // fires early (the deadline moved later meanwhile), it waits again until the deadline.
    void arm(std::chrono::milliseconds timeout) {
        timed_out = false;
        deadline = Clock::now() + timeout;
        if (!waiting || deadline < timer.expiry()) wait_for_deadline();
    }

    void disarm() { deadline = Clock::time_point::max(); }

  private:
    using Clock = std::chrono::steady_clock;

    void wait_for_deadline() {
        const auto wait = ++waits;
        waiting = true;
        timer.expires_at(deadline);  // a wait this replaces completes as aborted, or stale
        timer.async_wait([self = shared_from_this(), wait](error_code ec) {
            if (ec || wait != self->waits) return;
            self->waiting = false;
            if (self->deadline == Clock::time_point::max()) return;  // disarmed
            if (Clock::now() < self->deadline) {
                self->wait_for_deadline();
                return;
            }
            self->timed_out = true;
            error_code ignored;
            self->socket.cancel(ignored);
        });
    }

    Clock::time_point deadline = Clock::time_point::max();
    std::uint64_t waits = 0;  // tells the current wait's completion from a replaced one's
    bool waiting = false;     // a wait is pending (its expiry is timer.expiry())
};

bool client_gone(const error_code& ec) {
    // stream_truncated: a TLS client closed without close_notify, which is how most do.
    return ec == http::error::end_of_stream || ec == http::error::partial_message ||
           ec == ssl::error::stream_truncated || ec == asio::error::eof ||
           ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
           ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor;
}

// Maps a failed read to the answer it deserves; nullopt means the client is gone.
std::optional<Response> answer_for_read_error(const Connection& c, const error_code& ec) {
    if (c.timed_out) return error_response(408, "request timeout");
    if (ec == http::error::header_limit) return error_response(431, "request headers too large");
    if (ec == http::error::body_limit) return error_response(413, "body too large");
    if (client_gone(ec)) return std::nullopt;
    return error_response(400, "malformed HTTP request");
}

// Feeds the parser what is already buffered, as Beast's reads do, but without an asynchronous
// operation: Beast completes an operation that needed no I/O through a post, a trip through the
// scheduler and a suspension of the request's coroutine. True when `done()` holds or the parser
// failed (`ec`, as Beast's read would report it); false when more bytes must be read first,
// which Beast's read then does with the parser where this left it.
template <class Parser, class Done>
bool parse_buffered(Parser& parser, beast::flat_buffer& buffer, error_code& ec, Done done) {
    while (!done()) {
        if (buffer.size() == 0) return false;
        const auto used = parser.put(buffer.data(), ec);
        buffer.consume(used);
        if (ec == http::error::need_more) {
            ec = {};
            return false;
        }
        if (ec) return true;
        if (used == 0) return false;
    }
    return true;
}

// Lines that anyone who can reach the port can cause (4xx answers, refused connections): at
// most `per_second` of them a second, so a flood cannot flood the log. The rest are counted and
// reported in one line with the first such line of a later second.
class ClientErrorLog {
  public:
    bool admit(std::uint32_t per_second) {
        if (per_second == 0) return true;
        const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                             std::chrono::steady_clock::now().time_since_epoch())
                             .count();
        auto second = second_.load();
        if (now != second && second_.compare_exchange_strong(second, now)) {
            count_.store(0);
            if (const auto dropped = suppressed_.exchange(0); dropped > 0) {
                log::warn("client errors not logged",
                          {{"suppressed", dropped}, {"client_errors_per_second", per_second}});
            }
        }
        if (count_.fetch_add(1) < per_second) return true;
        suppressed_.fetch_add(1);
        return false;
    }

  private:
    std::atomic<std::int64_t> second_{0};
    std::atomic<std::uint32_t> count_{0};
    std::atomic<std::uint64_t> suppressed_{0};
};

// A share of limits.max_unverified_body_bytes, held while a body is read and verified: without
// it, a client with no key could make the daemon hold max_body_bytes per open connection. The
// same bytes count against the client's own share (limits.max_unverified_body_bytes_per_ip), so
// that one address cannot hold all of it.
class BodyReservation {
  public:
    BodyReservation(std::atomic<std::uint64_t>& used, std::atomic<std::uint64_t>& client_used)
        : used_(used), client_used_(client_used) {}
    ~BodyReservation() { release(); }
    BodyReservation(const BodyReservation&) = delete;
    BodyReservation& operator=(const BodyReservation&) = delete;

    // Holds `bytes` in all, if the total stays within `limit` and the client's within `share`
    // (0: no share). Returns the limit it would pass, if any.
    std::optional<Overload> grow_to(std::uint64_t bytes, std::uint64_t limit, std::uint64_t share) {
        if (bytes <= bytes_) return std::nullopt;
        const auto more = bytes - bytes_;
        if (!take(used_, more, limit)) return Overload::max_unverified_body_bytes;
        if (!take(client_used_, more, share != 0 ? share : UINT64_MAX)) {
            used_.fetch_sub(more, std::memory_order_relaxed);
            return Overload::max_unverified_body_bytes_per_ip;
        }
        bytes_ = bytes;
        return std::nullopt;
    }

    void release() {
        if (bytes_ == 0) return;
        used_.fetch_sub(bytes_, std::memory_order_relaxed);
        client_used_.fetch_sub(bytes_, std::memory_order_relaxed);
        bytes_ = 0;
    }

  private:
    static bool take(std::atomic<std::uint64_t>& used, std::uint64_t more, std::uint64_t limit) {
        auto now = used.load(std::memory_order_relaxed);
        do {
            if (more > limit || now > limit - more) return false;
        } while (!used.compare_exchange_weak(now, now + more, std::memory_order_relaxed));
        return true;
    }

    std::atomic<std::uint64_t>& used_;
    std::atomic<std::uint64_t>& client_used_;
    std::uint64_t bytes_ = 0;
};

// Suspends the request's coroutine until the sink has kept (or refused) the event; the I/O
// thread serves other connections meanwhile, which is what lets many requests share one commit.
template <class Token>
auto async_submit(WebhookService& service, asio::io_context& ioc, Accepted accepted,
                  Token&& token) {
    return asio::async_initiate<Token, void(SubmitResult)>(
        [&service, &ioc](auto handler, Accepted a) {
            auto executor = asio::get_associated_executor(handler);
            auto shared = std::make_shared<decltype(handler)>(std::move(handler));
            service.submit(std::move(a), [shared, executor, &ioc](SubmitResult r) {
                auto resume = [shared, r = std::move(r)]() mutable {
                    std::move (*shared)(std::move(r));
                };
                // The spool's writer answers a commit's requests together: one hand-over to
                // the I/O threads for all of them, not a post (and maybe a wake-up) each. Each
                // request then resumes on its own executor (its connection's strand when there
                // are several I/O threads; at once when there is one).
                auto* batch = CompletionBatch::current();
                if (batch != nullptr) {
                    batch->add(
                        &ioc,
                        [executor, resume = std::move(resume)]() mutable {
                            asio::dispatch(executor, std::move(resume));
                        },
                        [&ioc] {
                            return
                                [ex = ioc.get_executor()](std::vector<CompletionBatch::Work> work) {
                                    asio::post(ex, [work = std::move(work)] {
                                        for (const auto& w : work) w();
                                    });
                                };
                        });
                } else {
                    asio::post(executor, std::move(resume));
                }
            });
        },
        token, std::move(accepted));
}

std::string truncated(std::string_view s, std::size_t n) {
    return s.size() <= n ? std::string(s) : std::string(s.substr(0, n)) + "...";
}

}  // namespace

void serialize_response(const Response& r, unsigned version, bool keep_alive, std::string& out) {
    const auto status = static_cast<http::status>(r.status);
    const std::string_view content_type =
        r.content_type.empty() ? std::string_view("application/json") : r.content_type;
    const auto number = [&out](std::size_t n) {
        std::array<char, 20> digits;
        const auto end = std::to_chars(digits.data(), digits.data() + digits.size(), n).ptr;
        out.append(digits.data(), end);
    };
    out.assign(version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ");
    number(static_cast<std::size_t>(r.status));
    out += ' ';
    out += http::obsolete_reason(status);
    out += "\r\nServer: sigsci-webhookd\r\nContent-Type: ";
    out += content_type;
    if (!r.allow.empty()) {
        out += "\r\nAllow: ";
        out += r.allow;
    }
    if (version >= 11 && !keep_alive) out += "\r\nConnection: close";
    if (version < 11 && keep_alive) out += "\r\nConnection: keep-alive";
    out += "\r\nContent-Length: ";
    number(r.body.size());
    out += "\r\n\r\n";
    out += r.body;
}

struct Server::Impl : std::enable_shared_from_this<Impl> {
    Impl(asio::io_context& i, WebhookService& s, unsigned threads)
        : ioc(i), service(s), single_thread(threads == 1) {}

    // The executor a new connection runs on.
    asio::any_io_executor connection_executor() {
        if (single_thread) return ioc.get_executor();
        return asio::make_strand(ioc);
    }

    asio::io_context& ioc;
    WebhookService& service;
    const bool single_thread;
    // A TLS listener's current context: SIGHUP swaps in a new one for new connections, while
    // connections already open keep the one they started with.
    struct TlsSlot {
        mutable std::mutex mutex;
        std::shared_ptr<ssl::context> context;
        std::shared_ptr<ssl::context> get() const {
            std::lock_guard lock(mutex);
            return context;
        }
    };
    struct Bound {
        std::shared_ptr<tcp::acceptor> acceptor;
        Listener role;
        std::string address;           // e.g. "127.0.0.1:43123"
        std::shared_ptr<TlsSlot> tls;  // null: plain
        ListenConfig config;           // as configured (for TLS reloads)
    };
    std::vector<Bound> acceptors;
    std::atomic<bool> draining{false};
    ClientErrorLog client_errors;
    // Whether a line a client caused (4xx, refused, failed handshake) may be logged now.
    bool admit_client_error() {
        return client_errors.admit(service.snapshot()->config.log.client_errors_per_second);
    }
    // limits.max_unverified_body_bytes: bytes reserved for bodies being read, not yet verified.
    std::atomic<std::uint64_t> unverified_body_bytes{0};
    std::size_t admin_connections = 0;  // guarded by mutex
    // Per client (limit_key): its webhook connections, and the body bytes they hold unverified.
    struct Client {
        std::size_t connections = 0;
        std::shared_ptr<std::atomic<std::uint64_t>> unverified =
            std::make_shared<std::atomic<std::uint64_t>>(0);
    };
    std::unordered_map<std::string, Client> per_ip;  // guarded by mutex

    mutable std::mutex mutex;
    std::condition_variable all_closed;
    std::unordered_set<std::shared_ptr<Connection>> connections;  // guarded by mutex

    // Counts the connection in, or says which limit refuses it.
    std::optional<std::string> try_register(const std::shared_ptr<Connection>& c,
                                            const Limits& limits) {
        std::lock_guard lock(mutex);
        if (c->role == Listener::admin) {
            if (admin_connections >= max_admin_connections) return "admin connections reached 64";
            ++admin_connections;
        } else {
            auto* m = service.metrics();
            if (connections.size() - admin_connections >= limits.max_connections) {
                if (m) m->overloaded(Overload::max_connections);
                return "max_connections reached";
            }
            auto& from_ip = per_ip[c->remote_ip];
            if (limits.max_connections_per_ip != 0 &&
                from_ip.connections >= limits.max_connections_per_ip) {
                if (from_ip.connections == 0) per_ip.erase(c->remote_ip);
                if (m) m->overloaded(Overload::max_connections_per_ip);
                return "max_connections_per_ip reached";
            }
            ++from_ip.connections;
            c->client_unverified = from_ip.unverified;
            if (m) m->connection_opened();
        }
        connections.insert(c);
        return std::nullopt;
    }

    void unregister(const std::shared_ptr<Connection>& c) {
        std::lock_guard lock(mutex);
        if (connections.erase(c) == 0) return;
        if (c->role == Listener::admin) {
            --admin_connections;
        } else {
            if (auto it = per_ip.find(c->remote_ip);
                it != per_ip.end() && --it->second.connections == 0)
                per_ip.erase(it);
            if (auto* m = service.metrics()) m->connection_closed();
        }
        if (connections.empty()) all_closed.notify_all();
    }

    void add(std::shared_ptr<tcp::acceptor> acceptor, Listener role,
             const ListenConfig& config = {}) {
        const auto local = acceptor->local_endpoint();
        const auto host = local.address().to_string();
        std::shared_ptr<TlsSlot> tls;
        if (config.tls()) {
            tls = std::make_shared<TlsSlot>();
            tls->context = make_server_tls(config.tls_cert, config.tls_key);
        }
        acceptors.push_back({std::move(acceptor), role,
                             (local.address().is_v6() ? "[" + host + "]" : host) + ":" +
                                 std::to_string(local.port()),
                             std::move(tls), config});
    }

    asio::awaitable<void> accept_loop(Bound bound);
    asio::awaitable<void> session(std::shared_ptr<Connection> c);
    template <class Stream>
    asio::awaitable<void> serve(std::shared_ptr<Connection> c, Stream& stream);
    asio::awaitable<void> refuse(std::shared_ptr<Connection> c, std::string why);
    template <class Stream>
    asio::awaitable<bool> write_response(Connection& c, Stream& stream, const Response& r,
                                         unsigned version, bool keep_alive,
                                         std::chrono::milliseconds timeout);
    asio::awaitable<void> linger_and_close(Connection& c, tcp::socket& stream);
    asio::awaitable<void> linger_and_close(Connection& c, ssl::stream<tcp::socket&>& stream);
};

asio::awaitable<void> Server::Impl::accept_loop(Bound bound) {
    auto self = shared_from_this();
    const auto& acceptor = bound.acceptor;
    const auto role = bound.role;
    for (;;) {
        auto [ec, socket] = co_await acceptor->async_accept(connection_executor(), use_tuple);
        if (ec) {
            if (!acceptor->is_open() || ec == asio::error::operation_aborted) co_return;
            log::error("accept failed", {{"error", ec.message()}});
            // Out of descriptors, most likely: back off instead of spinning on the error.
            asio::steady_timer pause(co_await asio::this_coro::executor, 50ms);
            co_await pause.async_wait(use_tuple);
            continue;
        }
        error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        auto c = std::make_shared<Connection>(std::move(socket), role,
                                              bound.tls ? bound.tls->get() : nullptr);
        if (auto refused = try_register(c, service.snapshot()->config.limits)) {
            asio::co_spawn(c->socket.get_executor(), refuse(c, std::move(*refused)),
                           asio::detached);
            continue;
        }
        asio::co_spawn(c->socket.get_executor(), session(c), [self, c](std::exception_ptr e) {
            if (e) {
                try {
                    std::rethrow_exception(e);
                } catch (const std::exception& ex) {
                    log::error("connection failed",
                               {{"remote", c->remote_address}, {"error", ex.what()}});
                }
            }
            error_code close_ec;
            c->socket.close(close_ec);
            c->timer.cancel();
            self->unregister(c);
            log::debug("connection closed", {{"remote", c->remote_address}});
        });
    }
}

asio::awaitable<void> Server::Impl::refuse(std::shared_ptr<Connection> c, std::string why) {
    if (admit_client_error()) {
        log::warn("connection refused",
                  {{"remote", c->remote_address}, {"status", 503}, {"error", why}});
    }
    // A TLS client would not understand a plain answer, and a handshake is what a flood wants
    // us to spend: it is just closed.
    if (!c->tls) {
        const auto r = error_response(503, "too many connections");
        const auto timeout = service.snapshot()->config.limits.request_timeout;
        if (co_await write_response(*c, c->socket, r, 11, false,
                                    std::min<std::chrono::milliseconds>(timeout, 1000ms))) {
            co_await linger_and_close(*c, c->socket);
        }
    }
    error_code ignored;
    c->socket.close(ignored);
    c->timer.cancel();
}

template <class Stream>
asio::awaitable<bool> Server::Impl::write_response(Connection& c, Stream& stream, const Response& r,
                                                   unsigned version, bool keep_alive,
                                                   std::chrono::milliseconds timeout) {
    serialize_response(r, version, keep_alive, c.output);
    c.arm(timeout);
    auto [ec, n] = co_await asio::async_write(stream, asio::buffer(c.output), use_tuple);
    c.disarm();
    co_return !ec;
}

asio::awaitable<void> Server::Impl::linger_and_close(Connection& c, tcp::socket&) {
    error_code ec;
    c.socket.shutdown(tcp::socket::shutdown_send, ec);
    if (ec) co_return;
    c.arm(linger_time);
    std::array<char, 8192> sink;
    std::size_t total = 0;
    while (total < linger_bytes) {
        auto [rec, n] = co_await c.socket.async_read_some(asio::buffer(sink), use_tuple);
        if (rec) break;
        total += n;
    }
    c.disarm();
}

// TLS has its own goodbye: close_notify, and the peer's in return, within the linger time.
asio::awaitable<void> Server::Impl::linger_and_close(Connection& c,
                                                     ssl::stream<tcp::socket&>& stream) {
    c.arm(linger_time);
    co_await stream.async_shutdown(use_tuple);
    c.disarm();
}

asio::awaitable<void> Server::Impl::session(std::shared_ptr<Connection> c) {
    if (!c->tls) {
        co_await serve(c, c->socket);
        co_return;
    }
    ssl::stream<tcp::socket&> stream(c->socket, *c->tls);
    // The handshake is part of the first request: the same deadline bounds it.
    c->arm(service.snapshot()->config.limits.request_timeout);
    auto [hec] = co_await stream.async_handshake(ssl::stream_base::server, use_tuple);
    c->disarm();
    if (hec) {
        if (admit_client_error()) {
            log::warn("TLS handshake failed",
                      {{"remote", c->remote_address},
                       {"error", c->timed_out ? std::string("timed out") : hec.message()}});
        }
        co_return;
    }
    co_await serve(c, stream);
}

// The life of one connection, top to bottom: wait for a request, read its head, decide, read
// its body, answer, and go round again while keep-alive holds.
template <class Stream>
asio::awaitable<void> Server::Impl::serve(std::shared_ptr<Connection> c, Stream& stream) {
    const std::string& remote = c->remote_address;
    beast::flat_buffer buffer;
    for (;;) {
        const auto runtime = service.snapshot();
        const Limits& limits = runtime->config.limits;

        // Idle: only the idle timeout applies until the next request's first byte arrives.
        if (buffer.size() == 0) {
            if (draining.load()) break;
            c->idle = true;
            c->arm(limits.idle_timeout);
            auto [ec, n] = co_await stream.async_read_some(buffer.prepare(4096), use_tuple);
            c->idle = false;
            if (ec) break;  // idle timeout, drain, or the client left: nothing to answer
            buffer.commit(n);
        }

        // From the first byte, the whole request (head and body) must arrive within one deadline.
        const auto started = std::chrono::steady_clock::now();
        c->arm(limits.request_timeout);
        http::request_parser<http::string_body> parser;
        parser.header_limit(limits.max_header_bytes);
        parser.body_limit(boost::none);  // the declared size is judged after routing (step 2)
        Response res;
        bool keep_alive = false;
        bool read_all = false;
        std::optional<Overload> over_budget;  // the limits.max_unverified_body_bytes* it met
        unsigned version = 11;
        std::string method;
        std::string path;

        error_code hec;
        if (!parse_buffered(parser, buffer, hec, [&] { return parser.is_header_done(); })) {
            std::tie(hec, std::ignore) =
                co_await http::async_read_header(stream, buffer, parser, use_tuple);
        }
        if (hec) {
            auto answer = answer_for_read_error(*c, hec);
            if (!answer) break;
            res = std::move(*answer);
        } else {
            auto& req = parser.get();
            version = req.version();
            method = std::string(req.method_string());
            path = truncated(req.target(), path_log_chars);
            std::optional<std::uint64_t> content_length;
            if (parser.content_length()) content_length = *parser.content_length();
            const RequestHead head{req.method_string(), req.target(), content_length,
                                   req[http::field::transfer_encoding], req["X-SigSci-Signature"]};
            std::variant<Response, const EndpointConfig*> decision;
            const auto fields = static_cast<std::size_t>(std::distance(req.begin(), req.end()));
            if (fields > limits.max_header_count) {
                auto r = error_response(431, "too many header fields");
                r.close = true;  // the body, if any, is not read
                decision = std::move(r);
            } else if (c->role == Listener::admin) {
                decision = service.route_admin(head);
            } else {
                decision = service.route_head(*runtime, head);
            }
            if (auto* early = std::get_if<Response>(&decision)) {
                res = std::move(*early);
                read_all = parser.is_done() && !res.close;
            } else {
                const auto& endpoint = *std::get<const EndpointConfig*>(decision);
                // Ask for the body only once we know we want it.
                if (beast::iequals(req[http::field::expect], "100-continue")) {
                    http::response<http::empty_body> cont{http::status::continue_, version};
                    auto [wec, wn] = co_await http::async_write(stream, cont, use_tuple);
                    if (wec) {
                        if (c->timed_out)
                            res = error_response(408, "request timeout");
                        else
                            break;
                    }
                }
                BodyReservation reservation(unverified_body_bytes, *c->client_unverified);
                if (!c->timed_out) {
                    parser.body_limit(limits.max_body_bytes);
                    parser.eager(true);
                    // The body counts against max_unverified_body_bytes as it arrives, so it is
                    // read piece by piece; a declared length that is never sent holds nothing.
                    const auto& body = req.body();
                    const auto fits = [&] {
                        over_budget =
                            reservation.grow_to(body.size(), limits.max_unverified_body_bytes,
                                                limits.max_unverified_body_bytes_per_ip);
                        return !over_budget;
                    };
                    error_code bec;
                    bool done =
                        parse_buffered(parser, buffer, bec, [&] { return parser.is_done(); });
                    while (!bec && fits() && !done) {
                        std::tie(bec, std::ignore) =
                            co_await http::async_read_some(stream, buffer, parser, use_tuple);
                        done = parser.is_done();
                    }
                    if (over_budget) {
                        if (auto* m = service.metrics()) m->overloaded(*over_budget);
                        res = error_response(503, "overloaded");
                        res.endpoint = endpoint.path;
                        res.error = "limits." + std::string(to_string(*over_budget)) + " reached";
                        res.close = true;  // the rest of the body is not read
                    } else if (bec) {
                        auto answer = answer_for_read_error(*c, bec);
                        if (!answer) break;
                        res = std::move(*answer);
                        res.endpoint = endpoint.path;
                    } else {
                        c->disarm();
                        read_all = true;
                        // The field stays in `req` while the body is moved out of it.
                        auto verdict = service.check_body(
                            *runtime, endpoint, req["X-SigSci-Signature"], std::move(req.body()));
                        // Verified (its memory is a pending event's now) or refused.
                        reservation.release();
                        if (auto* accepted = std::get_if<Accepted>(&verdict)) {
                            const auto event = accepted->event;
                            const bool unrouted = accepted->handlers.empty();
                            const auto result = co_await async_submit(
                                service, ioc, std::move(*accepted), asio::use_awaitable);
                            res = service.answer(*event, unrouted, result);
                        } else {
                            res = std::move(std::get<Response>(verdict));
                        }
                    }
                }
            }
            keep_alive = read_all && req.keep_alive() && !draining.load();
        }
        c->disarm();

        // Counted before the client can see the answer, so a scrape that follows it agrees.
        if (c->role == Listener::webhook) service.count(res);
        const bool written =
            co_await write_response(*c, stream, res, version, keep_alive, limits.request_timeout);
        const double ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started)
                .count();
        // A scraper asks every few seconds: its requests are not worth an info line each.
        const auto level = c->role == Listener::admin ? log::Level::debug
                           : res.status < 400         ? log::Level::info
                                                      : log::Level::warn;
        // A refusal for the body budget is a client's doing too (many bodies at once).
        const bool client_error = (res.status >= 400 && res.status < 500) || over_budget;
        if (log::enabled(level) &&
            (!client_error || client_errors.admit(runtime->config.log.client_errors_per_second))) {
            log::Fields fields{{"remote", remote}};
            if (!method.empty()) fields["method"] = method;
            if (!path.empty()) fields["path"] = path;
            fields["status"] = res.status;
            fields["duration_ms"] = static_cast<double>(static_cast<long>(ms * 1000)) / 1000;
            if (!res.endpoint.empty()) fields["endpoint"] = res.endpoint;
            if (!res.event_id.empty()) fields["event_id"] = res.event_id;
            if (!res.type.empty()) fields["type"] = res.type;
            if (res.duplicate) fields["duplicate"] = true;
            if (!res.error.empty()) fields["error"] = res.error;
            log::write(level, "request", fields);
        }

        if (!written) break;
        if (!keep_alive) {
            if (!read_all || c->tls) co_await linger_and_close(*c, stream);
            break;
        }
    }
    error_code ignored;
    c->socket.shutdown(tcp::socket::shutdown_both, ignored);
}

Server::Server(asio::io_context& ioc, WebhookService& service, unsigned io_threads)
    : impl_(std::make_shared<Impl>(ioc, service, io_threads)) {}

Server::~Server() = default;

void Server::listen(const std::vector<ListenConfig>& addresses, Listener role) {
    for (const auto& a : addresses) {
        error_code ec;
        const auto addr = asio::ip::make_address(a.host, ec);
        if (ec) throw std::runtime_error("listen " + a.address + ": " + ec.message());
        const tcp::endpoint ep(addr, a.port);
        auto acceptor = std::make_shared<tcp::acceptor>(asio::make_strand(impl_->ioc));
        auto fail = [&](const char* what) {
            throw std::runtime_error("listen " + a.address + ": " + what + ": " + ec.message());
        };
        acceptor->open(ep.protocol(), ec);
        if (ec) fail("open");
        acceptor->set_option(asio::socket_base::reuse_address(true), ec);
        if (ec) fail("set SO_REUSEADDR");
        // "[::]" means IPv6 only, as in nginx; list "0.0.0.0:PORT" too for IPv4.
        if (addr.is_v6()) {
            acceptor->set_option(asio::ip::v6_only(true), ec);
            if (ec) fail("set IPV6_V6ONLY");
        }
        acceptor->bind(ep, ec);
        if (ec) fail("bind");
        acceptor->listen(asio::socket_base::max_listen_connections, ec);
        if (ec) fail("listen");
        impl_->add(std::move(acceptor), role, a);
    }
}

void Server::reload_tls(const std::vector<ListenConfig>& addresses) {
    for (const auto& b : impl_->acceptors) {
        if (!b.tls) continue;
        const auto it = std::find_if(addresses.begin(), addresses.end(), [&](const auto& a) {
            return a.address == b.config.address && a.tls();
        });
        if (it == addresses.end()) continue;  // listener changes take effect at restart
        try {
            auto context = make_server_tls(it->tls_cert, it->tls_key);
            std::lock_guard lock(b.tls->mutex);
            b.tls->context = std::move(context);
            log::info("TLS certificate reloaded",
                      {{"address", b.address}, {"cert", it->tls_cert.string()}});
        } catch (const std::exception& e) {
            log::error("TLS certificate reload failed: the old one stays",
                       {{"address", b.address}, {"error", e.what()}});
        }
    }
}

void Server::adopt(int fd, Listener role) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
        throw std::runtime_error("socket activation: descriptor " + std::to_string(fd) +
                                 ": getsockname failed");
    }
    auto acceptor = std::make_shared<tcp::acceptor>(asio::make_strand(impl_->ioc));
    error_code ec;
    acceptor->assign(ss.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), fd, ec);
    if (ec) {
        throw std::runtime_error("socket activation: descriptor " + std::to_string(fd) + ": " +
                                 ec.message());
    }
    impl_->add(std::move(acceptor), role);
}

std::vector<std::string> Server::bound_addresses(Listener role) const {
    std::vector<std::string> out;
    for (const auto& b : impl_->acceptors) {
        if (b.role == role) out.push_back(b.address);
    }
    return out;
}

std::string connection_limit_key(std::string_view address) {
    error_code ec;
    const auto parsed = asio::ip::make_address(std::string(address), ec);
    return ec ? std::string() : limit_key(parsed);
}

std::vector<std::uint16_t> Server::ports(Listener role) const {
    std::vector<std::uint16_t> out;
    for (const auto& b : impl_->acceptors) {
        if (b.role == role) out.push_back(b.acceptor->local_endpoint().port());
    }
    return out;
}

void Server::start_accepting() {
    for (const auto& b : impl_->acceptors) {
        log::info("listening", {{"address", b.address},
                                {"role", b.role == Listener::admin ? "admin" : "webhook"}});
        asio::co_spawn(b.acceptor->get_executor(), impl_->accept_loop(b), asio::detached);
    }
}

void Server::stop_accepting() {
    impl_->draining.store(true);
    for (const auto& b : impl_->acceptors) {
        const auto acceptor = b.acceptor;
        asio::post(acceptor->get_executor(), [acceptor] {
            error_code ignored;
            acceptor->close(ignored);
        });
    }
    std::lock_guard lock(impl_->mutex);
    for (const auto& c : impl_->connections) {
        asio::post(c->socket.get_executor(), [c] {
            error_code ignored;
            if (c->idle) c->socket.cancel(ignored);
        });
    }
}

bool Server::wait_connections_closed(std::chrono::milliseconds timeout) {
    std::unique_lock lock(impl_->mutex);
    return impl_->all_closed.wait_for(lock, timeout, [&] { return impl_->connections.empty(); });
}

void Server::close_all() {
    std::lock_guard lock(impl_->mutex);
    for (const auto& c : impl_->connections) {
        asio::post(c->socket.get_executor(), [c] {
            error_code ignored;
            c->socket.cancel(ignored);
            c->socket.close(ignored);
        });
    }
}

std::size_t Server::connection_count() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->connections.size();
}

}  // namespace sigsci
