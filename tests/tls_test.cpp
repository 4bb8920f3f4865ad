// TLS listeners: a signed POST over TLS (the forward handler is the client, trusting a CA made
// here), plain HTTP refused, the certificate reloaded on SIGHUP, bad files refused at load.
#include <gtest/gtest.h>

#include <future>

#include "sigsci/daemon.hpp"
#include "sigsci/event.hpp"
#include "sigsci/forward_handler.hpp"
#include "sigsci/log.hpp"
#include "test_receiver.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

using namespace std::chrono_literals;

class TlsListenerTest : public ::testing::Test {
  protected:
    void SetUp() override {
        logs = std::make_shared<test::MemorySink>();
        log::configure(log::Format::json, log::Level::info, logs);
        std::filesystem::create_directories(dir / "ca1");
        first = test::make_test_ca(dir / "ca1");
        install(first);
    }
    void TearDown() override {
        if (daemon) daemon->shutdown();
        log::configure(log::Format::json, log::Level::info);
    }

    // Puts a CA's server certificate and key where the config points.
    void install(const test::TestCa& ca) {
        std::filesystem::copy_file(ca.server_cert, dir / "tls.pem",
                                   std::filesystem::copy_options::overwrite_existing);
        std::filesystem::copy_file(ca.server_key, dir / "tls.key",
                                   std::filesystem::copy_options::overwrite_existing);
    }

    std::string config_text() const {
        return R"({"listen": [{"address": "127.0.0.1:0",
                               "tls": {"cert": "tls.pem", "key": "tls.key"}}],
          "threads": 1,
          "endpoints": [{"path": "/sigsci/test", "signing_keys": [{"value": "tls-test-key"}],
                         "routes": [{"types": ["*"], "handlers": ["archive"]}]}],
          "handlers": {"archive": {"kind": "file", "path": "events.jsonl"}},
          "spool": {"path": "spool.db"}})";
    }

    void start() {
        test::write_file(dir / "config.json", config_text());
        auto cfg = load_config(dir / "config.json");
        ASSERT_TRUE(cfg) << cfg.error();
        daemon = std::make_unique<Daemon>(std::move(cfg).value());
        daemon->start();
        port = daemon->ports().at(0);
    }

    // An HTTPS client trusting `ca`: the forward handler, signing like Signal Sciences.
    std::unique_ptr<ForwardHandler> client(const test::TestCa& ca) {
        ForwardConfig c;
        c.url = parse_url("https://127.0.0.1:" + std::to_string(port) + "/sigsci/test").value();
        c.ca_file = ca.ca_cert;
        c.sign_key = "tls-test-key";
        c.timeout = 5000ms;
        return std::make_unique<ForwardHandler>("client", c);
    }

    static DeliveryOutcome post(Handler& client, const std::string& body) {
        auto envelope = parse_envelope(body);
        auto event =
            make_event("/x", body, std::move(envelope).value(), std::chrono::system_clock::now());
        auto promise = std::make_shared<std::promise<DeliveryOutcome>>();
        auto future = promise->get_future();
        client.deliver(event, [promise](DeliveryOutcome o) { promise->set_value(std::move(o)); });
        EXPECT_EQ(future.wait_for(20s), std::future_status::ready);
        return future.get();
    }

    test::TempDir dir;
    std::shared_ptr<test::MemorySink> logs;
    test::TestCa first;
    std::unique_ptr<Daemon> daemon;
    std::uint16_t port = 0;
};

TEST_F(TlsListenerTest, SignedPostOverTlsIsAcceptedAndArchived) {
    start();
    auto https = client(first);
    const auto body = test::sample("flag");
    const auto outcome = post(*https, body);
    ASSERT_TRUE(outcome.ok) << outcome.error;
    EXPECT_EQ(outcome.details["http_status"], 200);
    ASSERT_TRUE(daemon->wait_deliveries_idle(10s));
    const auto lines = test::read_lines(dir / "events.jsonl");
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(Json::parse(lines[0])["type"], "flag");
    // A forged signature over TLS is still 401: TLS authenticates us, not the sender.
    ForwardConfig forged;
    forged.url = parse_url("https://127.0.0.1:" + std::to_string(port) + "/sigsci/test").value();
    forged.ca_file = first.ca_cert;
    forged.sign_key = "not-the-key";
    ForwardHandler forger("forger", forged);
    const auto refused = post(forger, body);
    EXPECT_TRUE(refused.permanent);
    EXPECT_EQ(refused.details["http_status"], 401);
}

TEST_F(TlsListenerTest, PlainHttpToATlsListenerIsClosedWithoutAnAnswer) {
    start();
    test::RawClient plain(port);
    plain.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_TRUE(plain.peer_closed());
    EXPECT_TRUE(logs->wait_for_record([](Json& j) { return j["msg"] == "TLS handshake failed"; }));
    // And the listener still serves TLS clients afterwards.
    EXPECT_TRUE(post(*client(first), test::sample("flag")).ok);
}

TEST_F(TlsListenerTest, CertificateIsReloadedOnSighupWithoutDroppingConnections) {
    start();
    auto before = client(first);
    ASSERT_TRUE(post(*before, test::numbered(test::sample("flag"), 1)).ok);

    std::filesystem::create_directories(dir / "ca2");
    const auto second = test::make_test_ca(dir / "ca2");
    install(second);
    ASSERT_TRUE(daemon->reload());
    EXPECT_TRUE(
        logs->wait_for_record([](Json& j) { return j["msg"] == "TLS certificate reloaded"; }));

    // New connections get the new certificate...
    const auto with_new_ca = post(*client(second), test::numbered(test::sample("flag"), 2));
    EXPECT_TRUE(with_new_ca.ok) << with_new_ca.error;
    const auto with_old_ca = post(*client(first), test::numbered(test::sample("flag"), 3));
    EXPECT_FALSE(with_old_ca.ok);
    EXPECT_NE(with_old_ca.error.find("TLS handshake"), std::string::npos) << with_old_ca.error;
    // ...while the connection opened before the reload keeps working.
    const auto kept = post(*before, test::numbered(test::sample("flag"), 4));
    EXPECT_TRUE(kept.ok) << kept.error;
    EXPECT_EQ(before->connections_opened(), 1u);
}

TEST_F(TlsListenerTest, BadCertificateFilesFailTheConfigNamingTheKeyPath) {
    test::write_file(dir / "tls.pem", "not a certificate\n");
    test::write_file(dir / "config.json", config_text());
    auto cfg = load_config(dir / "config.json");
    ASSERT_FALSE(cfg);
    EXPECT_NE(cfg.error().find("config.json: listen[0].tls: cannot load certificate chain"),
              std::string::npos)
        << cfg.error();

    install(first);
    std::filesystem::create_directories(dir / "other");
    const auto other = test::make_test_ca(dir / "other");
    std::filesystem::copy_file(other.server_key, dir / "tls.key",
                               std::filesystem::copy_options::overwrite_existing);
    cfg = load_config(dir / "config.json");
    ASSERT_FALSE(cfg);
    EXPECT_NE(cfg.error().find("does not match certificate"), std::string::npos) << cfg.error();
}

TEST_F(TlsListenerTest, AReloadWithABadCertificateKeepsTheOldOne) {
    start();
    test::write_file(dir / "tls.pem", "garbage\n");
    EXPECT_FALSE(daemon->reload());  // the config no longer loads: the old one keeps serving
    EXPECT_TRUE(post(*client(first), test::sample("flag")).ok);
}

}  // namespace
}  // namespace sigsci
