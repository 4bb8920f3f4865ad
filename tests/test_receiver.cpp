#include "test_receiver.hpp"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <thread>

namespace sigsci::test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using asio::ip::tcp;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// ---- a test CA -------------------------------------------------------------------------------

namespace {

struct KeyFree {
    void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct CertFree {
    void operator()(X509* c) const { X509_free(c); }
};
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;
using Cert = std::unique_ptr<X509, CertFree>;

void check(bool ok, const char* what) {
    if (!ok) throw std::runtime_error(std::string("test CA: ") + what);
}

Cert make_cert(EVP_PKEY* key, const char* cn, X509* issuer, EVP_PKEY* issuer_key, bool ca,
               long serial) {
    Cert cert(X509_new());
    check(cert != nullptr, "X509_new");
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400);
    X509_set_pubkey(cert.get(), key);
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn),
                               -1, -1, 0);
    X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer ? issuer : cert.get(), cert.get(), nullptr, nullptr, 0);
    auto add = [&](int nid, const char* value) {
        X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
        check(ext != nullptr, "extension");
        X509_add_ext(cert.get(), ext, -1);
        X509_EXTENSION_free(ext);
    };
    if (ca) {
        add(NID_basic_constraints, "critical,CA:TRUE");
        add(NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add(NID_basic_constraints, "critical,CA:FALSE");
        add(NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost");
        add(NID_ext_key_usage, "serverAuth");
    }
    check(X509_sign(cert.get(), issuer_key, EVP_sha256()) > 0, "X509_sign");
    return cert;
}

void write_pem(const std::filesystem::path& path, const std::vector<X509*>& certs, EVP_PKEY* key) {
    FILE* f = std::fopen(path.c_str(), "w");
    check(f != nullptr, "fopen");
    for (X509* c : certs) PEM_write_X509(f, c);
    if (key) PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
    std::fclose(f);
}

}  // namespace

TestCa make_test_ca(const std::filesystem::path& dir) {
    Key ca_key(EVP_EC_gen("P-256"));
    Key leaf_key(EVP_EC_gen("P-256"));
    check(ca_key && leaf_key, "EVP_EC_gen");
    // A name of its own, so that another test CA is a stranger, not a namesake.
    const auto ca_name = "sigsci-webhookd test CA " + dir.filename().string();
    auto ca = make_cert(ca_key.get(), ca_name.c_str(), nullptr, ca_key.get(), true, 1);
    auto leaf = make_cert(leaf_key.get(), "127.0.0.1", ca.get(), ca_key.get(), false, 2);
    TestCa out{dir / "ca.pem", dir / "server.pem", dir / "server.key"};
    write_pem(out.ca_cert, {ca.get()}, nullptr);
    write_pem(out.server_cert, {leaf.get(), ca.get()}, nullptr);
    write_pem(out.server_key, {}, leaf_key.get());
    return out;
}

// ---- the receiver ----------------------------------------------------------------------------

struct TestReceiver::Impl : std::enable_shared_from_this<Impl> {
    std::unique_ptr<ssl::context> tls;  // outlives the sessions, destroyed with ioc below
    asio::io_context ioc{1};
    tcp::acceptor acceptor{ioc};
    std::thread thread;
    std::atomic<std::size_t> connections{0};

    std::mutex mutex;
    std::condition_variable arrived;
    std::vector<ReceivedRequest> received;
    std::deque<ScriptedAnswer> script;

    ScriptedAnswer next_answer(const http::request<http::string_body>& req) {
        ReceivedRequest r{
            std::string(req.method_string()), std::string(req.target()), {}, req.body()};
        for (const auto& f : req) {
            std::string name(f.name_string());
            for (auto& ch : name)
                ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
            r.headers[name] = std::string(f.value());
        }
        std::lock_guard lock(mutex);
        received.push_back(std::move(r));
        arrived.notify_all();
        if (script.empty()) return {};
        auto a = script.front();
        script.pop_front();
        return a;
    }

    template <class Stream>
    asio::awaitable<void> serve(Stream& stream) {
        beast::flat_buffer buffer;
        for (;;) {
            http::request<http::string_body> req;
            auto [ec, n] = co_await http::async_read(stream, buffer, req, use_tuple);
            if (ec) co_return;
            const auto answer = next_answer(req);
            if (answer.hang) {
                // Keep the connection open and silent until the client gives up.
                co_await http::async_read(stream, buffer, req, use_tuple);
                co_return;
            }
            http::response<http::string_body> res{static_cast<http::status>(answer.status), 11};
            for (const auto& [k, v] : answer.headers) res.set(k, v);
            res.body() = answer.body;
            res.keep_alive(req.keep_alive());
            res.prepare_payload();
            auto [wec, wn] = co_await http::async_write(stream, res, use_tuple);
            if (wec || !req.keep_alive()) co_return;
        }
    }

    asio::awaitable<void> session(tcp::socket socket) {
        ++connections;
        if (!tls) {
            beast::tcp_stream stream(std::move(socket));
            co_await serve(stream);
            co_return;
        }
        beast::ssl_stream<beast::tcp_stream> stream(std::move(socket), *tls);
        auto [hec] = co_await stream.async_handshake(ssl::stream_base::server, use_tuple);
        if (hec) co_return;
        co_await serve(stream);
    }

    asio::awaitable<void> accept_loop() {
        for (;;) {
            auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
            if (ec) co_return;
            asio::co_spawn(ioc, session(std::move(socket)), asio::detached);
        }
    }

    void start() {
        const tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
        acceptor.open(ep.protocol());
        acceptor.set_option(asio::socket_base::reuse_address(true));
        acceptor.bind(ep);
        acceptor.listen();
        asio::co_spawn(ioc, accept_loop(), asio::detached);
        thread = std::thread([this] { ioc.run(); });
    }
};

TestReceiver::TestReceiver() : impl_(std::make_shared<Impl>()) {
    impl_->start();
}

TestReceiver::TestReceiver(const std::filesystem::path& cert, const std::filesystem::path& key)
    : impl_(std::make_shared<Impl>()) {
    impl_->tls = std::make_unique<ssl::context>(ssl::context::tls_server);
    impl_->tls->use_certificate_chain_file(cert.string());
    impl_->tls->use_private_key_file(key.string(), ssl::context::pem);
    impl_->start();
}

TestReceiver::~TestReceiver() {
    impl_->ioc.stop();  // ends every session and the accept loop; their frames are destroyed
    impl_->thread.join();
}

std::uint16_t TestReceiver::port() const {
    return impl_->acceptor.local_endpoint().port();
}

void TestReceiver::script(std::vector<ScriptedAnswer> answers) {
    std::lock_guard lock(impl_->mutex);
    impl_->script.assign(answers.begin(), answers.end());
}

bool TestReceiver::wait_for(std::size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(impl_->mutex);
    return impl_->arrived.wait_for(lock, timeout, [&] { return impl_->received.size() >= n; });
}

std::vector<ReceivedRequest> TestReceiver::requests() {
    std::lock_guard lock(impl_->mutex);
    return impl_->received;
}

std::size_t TestReceiver::connections() const {
    return impl_->connections.load();
}

}  // namespace sigsci::test
