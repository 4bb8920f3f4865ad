#include "sigsci/forward_handler.hpp"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <atomic>
#include <deque>
#include <set>

#include "sigsci/handler_registry.hpp"
#include "sigsci/reactor.hpp"
#include "sigsci/signature.hpp"

namespace sigsci {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
// A kept-alive connection unused for longer than this is closed rather than reused: servers
// drop idle connections after a while, and a request sent into one that is closing fails.
constexpr auto max_idle_time = std::chrono::seconds(30);

struct Connection {
    std::unique_ptr<beast::tcp_stream> plain;
    std::unique_ptr<beast::ssl_stream<beast::tcp_stream>> tls;
    beast::flat_buffer buffer;
    std::chrono::steady_clock::time_point last_used;

    beast::tcp_stream& tcp() { return plain ? *plain : tls->next_layer(); }
    void close() {
        error_code ignored;
        tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
        tcp().socket().close(ignored);
    }
};

// A delivery, running or waiting for a slot. Its request (the body rendered from the event's
// JSON, or copied from it) is made once it has a slot, so a queue holds no more than its events.
struct Job {
    EventPtr event;
    DeliveryDone done;
};

// What came back from one request on one connection.
struct Exchange {
    error_code ec;
    bool answered = false;  // a status line and headers arrived
    bool keep_alive = false;
    int status = 0;
    std::string retry_after;
    std::string excerpt;
};

DeliveryOutcome failure(std::string error, Json details, bool permanent = false,
                        std::chrono::milliseconds retry_after = {}) {
    DeliveryOutcome o;
    o.ok = false;
    o.error = std::move(error);
    o.details = std::move(details);
    o.permanent = permanent;
    o.retry_after = retry_after;
    return o;
}

template <class Stream>
asio::awaitable<Exchange> exchange(Stream& stream, beast::flat_buffer& buffer,
                                   const http::request<http::string_body>& req) {
    Exchange x;
    auto [wec, wn] = co_await http::async_write(stream, req, use_tuple);
    if (wec) {
        x.ec = wec;
        co_return x;
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(max_forward_response_bytes);
    auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser, use_tuple);
    if (hec) {
        x.ec = hec;
        co_return x;
    }
    x.answered = true;
    const auto& head = parser.get();
    x.status = static_cast<int>(head.result_int());
    x.retry_after = std::string(head[http::field::retry_after]);
    auto [bec, bn] = co_await http::async_read(stream, buffer, parser, use_tuple);
    x.excerpt = parser.get().body().substr(0, forward_log_excerpt_bytes);
    // A body over the cap is left unread, so the connection cannot carry another request.
    x.keep_alive = !bec && parser.get().keep_alive();
    if (bec && bec != http::error::body_limit) x.ec = bec;
    co_return x;
}

}  // namespace

struct ForwardHandler::Impl : std::enable_shared_from_this<Impl> {
    Impl(std::string n, ForwardConfig c)
        : name(std::move(n)),
          config(std::move(c)),
          strand(asio::make_strand(handler_reactor())),
          resolver(strand),
          tls(ssl::context::tls_client) {
        SSL_CTX_set_min_proto_version(tls.native_handle(), TLS1_2_VERSION);
        if (config.insecure_skip_verify) {
            tls.set_verify_mode(ssl::verify_none);
        } else {
            tls.set_verify_mode(ssl::verify_peer);
            error_code ec;
            if (config.ca_file.empty()) {
                tls.set_default_verify_paths(ec);
            } else {
                tls.load_verify_file(config.ca_file.string(), ec);
            }
            if (ec) {
                throw std::runtime_error(
                    "handler " + name + ": cannot load CA certificates" +
                    (config.ca_file.empty() ? "" : " from " + config.ca_file.string()) + ": " +
                    ec.message());
            }
        }
    }

    std::string name;
    ForwardConfig config;
    asio::strand<asio::io_context::executor_type> strand;
    tcp::resolver resolver;
    ssl::context tls;
    std::atomic<std::uint64_t> opened{0};

    // Touched only on the strand.
    std::size_t running = 0;
    std::deque<Job> waiting;  // beyond max_concurrent, in arrival order
    std::vector<std::unique_ptr<Connection>> idle;
    std::set<Connection*> busy;
    bool terminated = false;

    Json details() const { return Json{{"destination", config.url.origin()}}; }

    void enqueue(Job job) {
        if (terminated) {
            job.done(failure("shutting down", details()));
            return;
        }
        if (running >= config.max_concurrent) {
            waiting.push_back(std::move(job));
            return;
        }
        ++running;
        asio::co_spawn(strand, run(shared_from_this(), std::move(job)), asio::detached);
    }

    static asio::awaitable<void> run(std::shared_ptr<Impl> self, Job job) {
        DeliveryOutcome outcome;
        try {
            auto req = self->make_request(*job.event);
            if (req) {
                outcome = co_await self->attempt(req.value());
            } else {
                // The same template and event would fail the same way every time.
                outcome = failure("body template: " + req.error(), self->details(), true);
            }
        } catch (const std::exception& e) {
            outcome = failure(std::string("forward failed: ") + e.what(), self->details());
        }
        job.done(std::move(outcome));
        --self->running;
        if (!self->waiting.empty()) {
            Job next = std::move(self->waiting.front());
            self->waiting.pop_front();
            self->enqueue(std::move(next));
        }
    }

    Result<http::request<http::string_body>> make_request(const Event& event) const {
        http::request<http::string_body> req{http::string_to_verb(config.method), config.url.target,
                                             11};
        if (config.body) {
            auto body = config.body->render(event.doc());
            if (!body) return Error{body.error()};
            req.body() = std::move(body).value();
        } else {
            req.body() = event.body;
        }
        req.set(http::field::host, config.url.host_header());
        req.set(http::field::user_agent, "sigsci-webhookd/" SIGSCI_VERSION);
        req.set(http::field::content_type, "application/json");
        for (const auto& [key, value] : config.headers) req.set(key, value);
        if (config.sign_key)
            req.set(config.sign_header, to_hex(hmac_sha256(*config.sign_key, req.body())));
        req.keep_alive(true);
        req.prepare_payload();
        return req;
    }

    // A kept-alive connection if one is fresh, else nullptr.
    std::unique_ptr<Connection> take_idle() {
        const auto now = std::chrono::steady_clock::now();
        while (!idle.empty()) {
            auto c = std::move(idle.back());
            idle.pop_back();
            if (now - c->last_used < max_idle_time) return c;
            c->close();
        }
        return nullptr;
    }

    // Resolves, connects and (for https) handshakes with verification; "" on success.
    asio::awaitable<std::string> connect(Connection& c,
                                         std::chrono::steady_clock::time_point deadline) {
        const auto& url = config.url;
        auto [rec, results] =
            co_await resolver.async_resolve(url.host, std::to_string(url.port), use_tuple);
        if (rec) co_return "resolve " + url.host + ": " + rec.message();
        if (url.tls) {
            c.tls = std::make_unique<beast::ssl_stream<beast::tcp_stream>>(strand, tls);
        } else {
            c.plain = std::make_unique<beast::tcp_stream>(strand);
        }
        busy.insert(&c);
        c.tcp().expires_at(deadline);
        auto [cec, ep] = co_await c.tcp().async_connect(results, use_tuple);
        if (cec) co_return "connect to " + url.origin() + ": " + cec.message();
        opened.fetch_add(1, std::memory_order_relaxed);
        error_code ignored;
        c.tcp().socket().set_option(tcp::no_delay(true), ignored);
        if (!url.tls) co_return "";
        SSL* s = c.tls->native_handle();
        if (!url.ip_literal) SSL_set_tlsext_host_name(s, url.host.c_str());  // SNI
        if (!config.insecure_skip_verify) {
            if (url.ip_literal) {
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), url.host.c_str());
            } else {
                SSL_set1_host(s, url.host.c_str());
            }
        }
        auto [hec] = co_await c.tls->async_handshake(ssl::stream_base::client, use_tuple);
        if (hec) {
            std::string why = hec.message();
            const long verify = SSL_get_verify_result(s);
            if (verify != X509_V_OK) why = X509_verify_cert_error_string(verify);
            co_return "TLS handshake with " + url.origin() + ": " + why;
        }
        co_return "";
    }

    asio::awaitable<DeliveryOutcome> attempt(const http::request<http::string_body>& req) {
        const auto deadline = std::chrono::steady_clock::now() + config.timeout;
        auto timed_out = [&] {
            return failure(
                "timed out after " + std::to_string(config.timeout.count()) + " ms (timeout_ms)",
                details());
        };
        for (int round = 0; round < 2; ++round) {
            auto c = round == 0 ? take_idle() : nullptr;
            const bool reused = c != nullptr;
            if (!c) {
                c = std::make_unique<Connection>();
                const auto error = co_await connect(*c, deadline);
                if (!error.empty()) {
                    busy.erase(c.get());
                    if (terminated) co_return failure("shutting down", details());
                    if (std::chrono::steady_clock::now() >= deadline) co_return timed_out();
                    co_return failure(error, details());
                }
            } else {
                busy.insert(c.get());
            }
            c->tcp().expires_at(deadline);
            // Not a ?: of two co_awaits: g++ 12 destroys that expression's temporaries twice.
            Exchange x;
            if (c->plain) {
                x = co_await exchange(*c->plain, c->buffer, req);
            } else {
                x = co_await exchange(*c->tls, c->buffer, req);
            }
            busy.erase(c.get());
            if (x.ec && !x.answered) {
                c->close();
                if (terminated) co_return failure("shutting down", details());
                if (x.ec == beast::error::timeout) co_return timed_out();
                // A kept-alive connection the server had closed: once more on a new one.
                if (reused) continue;
                co_return failure("request to " + config.url.origin() + ": " + x.ec.message(),
                                  details());
            }
            if (x.keep_alive && !x.ec && !terminated && idle.size() < config.max_concurrent) {
                c->last_used = std::chrono::steady_clock::now();
                c->tcp().expires_never();
                idle.push_back(std::move(c));
            } else {
                c->close();
            }
            co_return outcome_for(x);
        }
        co_return failure("request to " + config.url.origin() + " failed", details());
    }

    DeliveryOutcome outcome_for(const Exchange& x) const {
        auto d = details();
        d["http_status"] = x.status;
        const auto verdict =
            classify_response(x.status, x.retry_after, std::chrono::system_clock::now());
        using Kind = ForwardVerdict::Kind;
        if (verdict.kind == Kind::delivered) {
            DeliveryOutcome ok;
            ok.details = std::move(d);
            return ok;
        }
        d["response"] = x.excerpt;
        const auto what = "HTTP " + std::to_string(x.status) + " from " + config.url.origin();
        if (verdict.kind == Kind::retry) {
            if (verdict.retry_after.count() > 0) d["retry_after_ms"] = verdict.retry_after.count();
            return failure(what, std::move(d), false, verdict.retry_after);
        }
        return failure(
            what + (x.status >= 300 && x.status < 400 ? " (redirects are not followed): not retried"
                                                      : ": not retried"),
            std::move(d), true);
    }

    void terminate() {
        terminated = true;
        for (auto* c : busy) c->close();
        for (auto& c : idle) c->close();
        idle.clear();
        while (!waiting.empty()) {
            Job job = std::move(waiting.front());
            waiting.pop_front();
            job.done(failure("shutting down", details()));
        }
    }
};

ForwardHandler::ForwardHandler(std::string name, ForwardConfig config)
    : Handler(name), impl_(std::make_shared<Impl>(name, std::move(config))) {}

ForwardHandler::~ForwardHandler() {
    // Kept-alive connections belong to the reactor's thread; close them there.
    asio::post(impl_->strand, [impl = impl_] {
        for (auto& c : impl->idle) c->close();
        impl->idle.clear();
    });
}

void ForwardHandler::deliver(const EventPtr& event, DeliveryDone done) {
    Job job{event, std::move(done)};
    asio::post(impl_->strand,
               [impl = impl_, job = std::move(job)]() mutable { impl->enqueue(std::move(job)); });
}

std::size_t ForwardHandler::max_in_flight() const {
    return impl_->config.max_concurrent * in_flight_per_concurrent;
}

void ForwardHandler::terminate() {
    asio::post(impl_->strand, [impl = impl_] { impl->terminate(); });
}

std::uint64_t ForwardHandler::connections_opened() const {
    return impl_->opened.load(std::memory_order_relaxed);
}

// ---- config --------------------------------------------------------------------------------

namespace {

bool is_token(const std::string& s) {
    static const std::string extra = "!#$%&'*+-.^_`|~";
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || extra.find(c) != std::string::npos;
    });
}

}  // namespace

HandlerSpec parse_forward_handler(const std::string& name, ConfigObject& cfg,
                                  const ConfigContext& ctx) {
    ForwardConfig c;
    auto url_node = cfg.require("url");
    // The URL itself may be the secret (a chat webhook's path is its password).
    const std::string url_text = url_node.json().is_object() ? read_secret_source(url_node, ctx)
                                                             : url_node.as_nonempty_string();
    auto url = parse_url(url_text);
    if (!url) url_node.fail(url.error());
    c.url = std::move(url).value();
    if (auto n = cfg.get("method")) {
        c.method = n->as_string();
        if (c.method != "POST" && c.method != "PUT" && c.method != "PATCH")
            n->fail("must be \"POST\", \"PUT\" or \"PATCH\"");
    }
    std::optional<std::string> sign_header_seen;
    if (auto n = cfg.get("sign")) {
        auto s = n->as_object();
        c.sign_key = read_secret_source(s.require("key"), ctx);
        if (auto h = s.get("header")) {
            c.sign_header = h->as_nonempty_string();
            if (!is_token(c.sign_header)) h->fail("is not a valid header name");
        }
        s.finish();
    }
    if (auto n = cfg.get("headers")) {
        auto h = n->as_object();
        for (const auto& key : h.keys()) {
            auto value = h.require(key);
            if (!is_token(key)) value.fail("is not a valid header name");
            for (const char* reserved :
                 {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade"}) {
                if (beast::iequals(key, reserved)) value.fail("is set by the handler itself");
            }
            if (c.sign_key && beast::iequals(key, c.sign_header))
                value.fail("is the signature header of \"sign\"");
            std::string v =
                value.json().is_object() ? read_secret_source(value, ctx) : value.as_string();
            if (v.find_first_of("\r\n", 0) != std::string::npos ||
                v.find('\0') != std::string::npos)
                value.fail("must not contain line breaks or NUL");
            c.headers.emplace_back(key, std::move(v));
        }
    }
    if (auto n = cfg.get("body")) {
        auto t = BodyTemplate::compile(n->json());
        if (!t) n->fail(t.error());
        c.body = std::move(t).value();
    }
    if (auto n = cfg.get("timeout_ms"))
        c.timeout = std::chrono::milliseconds(n->as_uint(1, 600000));
    if (auto n = cfg.get("max_concurrent")) c.max_concurrent = n->as_uint(1, 1024);
    if (auto n = cfg.get("tls")) {
        if (!c.url.tls) n->fail("applies to https:// URLs only");
        auto t = n->as_object();
        if (auto f = t.get("ca_file")) {
            c.ca_file = f->as_nonempty_string();
            if (c.ca_file.is_relative()) c.ca_file = ctx.base_dir / c.ca_file;
            ssl::context check(ssl::context::tls_client);
            error_code ec;
            check.load_verify_file(c.ca_file.string(), ec);
            if (ec)
                f->fail("cannot load CA certificates from " + c.ca_file.string() + ": " +
                        ec.message());
        }
        if (auto f = t.get("insecure_skip_verify")) {
            c.insecure_skip_verify = f->as_bool();
            if (c.insecure_skip_verify && ctx.warnings) {
                ctx.warnings->push_back(f->path() +
                                        ": certificates are not verified; anyone on the path "
                                        "can read and change what is forwarded");
            }
        }
        t.finish();
    }
    cfg.finish();
    std::string summary = c.method + " " + c.url.origin() + " (" +
                          (c.body ? "template body" : "raw envelope") +
                          (c.sign_key ? ", re-signed in " + c.sign_header : "") + ", at most " +
                          std::to_string(c.max_concurrent) + " at once)";
    return HandlerSpec{name, "forward", summary,
                       [name, c] { return std::make_shared<ForwardHandler>(name, c); }};
}

}  // namespace sigsci
