// The forward handler: URL and template rules as pure functions, then real deliveries to a test
// receiver on 127.0.0.1 (plain and TLS with a CA made here), and through whole daemons.
#include <gtest/gtest.h>

#include <future>

#include "sigsci/daemon.hpp"
#include "sigsci/event.hpp"
#include "sigsci/forward_handler.hpp"
#include "sigsci/log.hpp"
#include "sigsci/signature.hpp"
#include "test_receiver.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

using namespace std::chrono_literals;
using Kind = ForwardVerdict::Kind;

EventPtr event_of(const std::string& body) {
    auto envelope = parse_envelope(body);
    EXPECT_TRUE(envelope) << envelope.error();
    return make_event("/sigsci/test", body, std::move(envelope).value(),
                      std::chrono::system_clock::now());
}

DeliveryOutcome deliver(Handler& handler, const EventPtr& event) {
    auto promise = std::make_shared<std::promise<DeliveryOutcome>>();
    auto future = promise->get_future();
    handler.deliver(event, [promise](DeliveryOutcome o) { promise->set_value(std::move(o)); });
    EXPECT_EQ(future.wait_for(20s), std::future_status::ready);
    return future.get();
}

std::string render(const std::string& spec, const std::string& body) {
    auto t = BodyTemplate::compile(Json::parse(spec));
    EXPECT_TRUE(t) << t.error();
    auto out = t.value().render(Json::parse(body));
    EXPECT_TRUE(out) << out.error();
    return out ? out.value() : "";
}

// ---- pure parts ----------------------------------------------------------------------------

TEST(ForwardUrl, ParsesSchemeHostPortAndTarget) {
    auto u = parse_url("https://hooks.example.com/services/T0/B0/secret?x=1").value();
    EXPECT_TRUE(u.tls);
    EXPECT_EQ(u.host, "hooks.example.com");
    EXPECT_EQ(u.port, 443);
    EXPECT_EQ(u.target, "/services/T0/B0/secret?x=1");
    EXPECT_EQ(u.origin(), "https://hooks.example.com:443");  // no path: it may be the secret
    EXPECT_EQ(u.host_header(), "hooks.example.com");
    EXPECT_FALSE(u.ip_literal);
    auto v = parse_url("http://[::1]:8088").value();
    EXPECT_EQ(v.host, "::1");
    EXPECT_EQ(v.port, 8088);
    EXPECT_EQ(v.target, "/");
    EXPECT_EQ(v.host_header(), "[::1]:8088");
    EXPECT_TRUE(v.ip_literal);
    EXPECT_TRUE(parse_url("https://192.0.2.7/").value().ip_literal);
    EXPECT_EQ(parse_url("http://127.0.0.1:9000?q").value().target, "/?q");
}

TEST(ForwardUrl, RefusesWhatItCannotSendSafely) {
    EXPECT_EQ(parse_url("ftp://x/").error(), "must start with https:// or http://");
    EXPECT_EQ(parse_url("https://user:pw@x/").error(),
              "must not carry user info (put credentials in \"headers\")");
    EXPECT_EQ(parse_url("https://x/#frag").error(), "must not have a #fragment");
    EXPECT_EQ(parse_url("https://x:0/").error(), "has an invalid port");
    EXPECT_EQ(parse_url("https://x:99999/").error(), "has an invalid port");
    EXPECT_EQ(parse_url("https:///path").error(), "has no valid host");
    EXPECT_EQ(parse_url("https://x/a b").error(), "must not contain spaces or control characters");
    EXPECT_EQ(parse_url("https://x/a\r\nHost: evil").error(),
              "must not contain spaces or control characters");
}

TEST(ForwardTemplate, ChatMessageAsDocumented) {
    const auto out = render(
        R"({"text": "Signal Sciences {/type}: {/payload/source} flagged for {/payload/reasons} ({/payload/requestCount} requests) {/link}"})",
        test::sample("flag"));
    EXPECT_EQ(
        out, R"({"text":"Signal Sciences flag: 198.51.100.23 flagged for {\"SQLI\":112,\"XSS\":3} )"
             R"((131 requests) https://dashboard.signalsciences.net/corps/examplecorp/sites/)"
             R"(www.example.com/events/65f3a1c2b7e4d90012a3b4c5"})");
}

TEST(ForwardTemplate, SplunkHecEventIsTheWholeEnvelopeInArrivalOrder) {
    const auto body = test::sample("flag");
    const auto out = render(R"({"event": "{/}", "sourcetype": "sigsci"})", body);
    EXPECT_EQ(out, R"({"event":)" + Json::parse(body).dump() + R"(,"sourcetype":"sigsci"})");
}

TEST(ForwardTemplate, WholeValuePlaceholdersKeepTheirType) {
    const auto out = render(
        R"({"count": "{/payload/requestCount}", "agents": ["{/payload/userAgents/0}", 1, true, null],
            "reasons": "{/payload/reasons}", "literal": "{{/not} {a} }"})",
        test::sample("flag"));
    EXPECT_EQ(
        out,
        R"x({"count":131,"agents":["sqlmap/1.7.2#stable (https://sqlmap.org)",1,true,null],"reasons":{"SQLI":112,"XSS":3},"literal":"{/not} {a} }"})x");
}

TEST(ForwardTemplate, MissingPointerFailsTheRenderNamingIt) {
    auto t = BodyTemplate::compile(Json::parse(R"({"a": ["{/payload/nope}"]})")).value();
    EXPECT_EQ(t.render(Json::parse(test::sample("flag"))).error(),
              "/payload/nope is not in the event");
    auto u = BodyTemplate::compile(Json::parse(R"("x {/payload/userAgents/x}")")).value();
    EXPECT_EQ(u.render(Json::parse(test::sample("flag"))).error(),
              "/payload/userAgents/x is not in the event");
}

TEST(ForwardTemplate, CompileErrorsNameTheTemplateLocation) {
    EXPECT_EQ(BodyTemplate::compile(Json::parse(R"({"a": {"b": "x {/type"}})")).error(),
              "/a/b: unterminated placeholder \"{/type\"");
    EXPECT_EQ(BodyTemplate::compile(Json::parse(R"(["ok", "{/a~2}"])")).error(),
              "/1: \"{/a~2}\" is not a valid JSON pointer");
}

TEST(ForwardVerdicts, StatusDecidesDeliveredRetryOrDead) {
    const auto now = std::chrono::system_clock::now();
    EXPECT_EQ(classify_response(200, "", now).kind, Kind::delivered);
    EXPECT_EQ(classify_response(204, "", now).kind, Kind::delivered);
    EXPECT_EQ(classify_response(503, "", now).kind, Kind::retry);
    EXPECT_EQ(classify_response(500, "", now).kind, Kind::retry);
    EXPECT_EQ(classify_response(408, "", now).kind, Kind::retry);
    EXPECT_EQ(classify_response(429, "", now).kind, Kind::retry);
    EXPECT_EQ(classify_response(400, "", now).kind, Kind::dead);
    EXPECT_EQ(classify_response(401, "", now).kind, Kind::dead);
    EXPECT_EQ(classify_response(404, "", now).kind, Kind::dead);
    EXPECT_EQ(classify_response(301, "", now).kind, Kind::dead);  // redirects are not followed
}

TEST(ForwardVerdicts, RetryAfterInSecondsOrAsAnHttpDate) {
    const auto now =
        std::chrono::system_clock::from_time_t(784111777);  // Sun, 06 Nov 1994 08:49:37
    EXPECT_EQ(classify_response(429, "7", now).retry_after, 7000ms);
    EXPECT_EQ(classify_response(503, "Sun, 06 Nov 1994 08:50:37 GMT", now).retry_after, 60000ms);
    EXPECT_EQ(classify_response(503, "Sun, 06 Nov 1994 08:40:00 GMT", now).retry_after, 0ms);
    EXPECT_EQ(classify_response(503, "soon", now).retry_after, 0ms);
}

// ---- against a receiver ----------------------------------------------------------------------

ForwardConfig config_for(const std::string& url) {
    ForwardConfig c;
    c.url = parse_url(url).value();
    c.timeout = 5000ms;
    return c;
}

TEST(ForwardHandler, PostsTheRawEnvelopeByteForByte) {
    test::TestReceiver receiver;
    auto c = config_for("http://127.0.0.1:" + std::to_string(receiver.port()) + "/in?src=sigsci");
    c.headers = {{"Authorization", "Bearer t0ken"}};
    ForwardHandler handler("fwd", c);
    const auto body = test::sample("agentAlert");
    const auto outcome = deliver(handler, event_of(body));
    EXPECT_TRUE(outcome.ok) << outcome.error;
    EXPECT_EQ(outcome.details["http_status"], 200);
    ASSERT_TRUE(receiver.wait_for(1));
    const auto r = receiver.requests().at(0);
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.target, "/in?src=sigsci");
    EXPECT_EQ(r.body, body);
    EXPECT_EQ(r.headers.at("content-type"), "application/json");
    EXPECT_EQ(r.headers.at("authorization"), "Bearer t0ken");
    EXPECT_EQ(r.headers.at("host"), "127.0.0.1:" + std::to_string(receiver.port()));
    EXPECT_EQ(r.headers.at("user-agent"), "sigsci-webhookd/" SIGSCI_VERSION);
    EXPECT_EQ(r.headers.count("x-sigsci-signature"), 0u);
}

TEST(ForwardHandler, ReSignedBodyVerifiesAtTheReceivingEnd) {
    test::TestReceiver receiver;
    auto c = config_for("http://127.0.0.1:" + std::to_string(receiver.port()) + "/");
    c.sign_key = "downstream-key";
    c.body =
        BodyTemplate::compile(Json::parse(R"({"event": "{/}", "sourcetype": "sigsci"})")).value();
    ForwardHandler handler("fwd", c);
    EXPECT_TRUE(deliver(handler, event_of(test::sample("flag"))).ok);
    ASSERT_TRUE(receiver.wait_for(1));
    const auto r = receiver.requests().at(0);
    EXPECT_EQ(verify_signature(r.headers.at("x-sigsci-signature"), r.body,
                               std::vector<std::string>{"downstream-key"}),
              SignatureCheck::ok);
    EXPECT_NE(verify_signature(r.headers.at("x-sigsci-signature"), r.body,
                               std::vector<std::string>{"other-key"}),
              SignatureCheck::ok);
}

TEST(ForwardHandler, ManyDeliveriesShareOneKeptAliveConnection) {
    test::TestReceiver receiver;
    auto c = config_for("http://127.0.0.1:" + std::to_string(receiver.port()) + "/");
    c.max_concurrent = 1;
    ForwardHandler handler("fwd", c);
    EXPECT_EQ(handler.max_in_flight(), Handler::in_flight_per_concurrent);  // from the spool
    for (int i = 0; i < 20; ++i) {
        ASSERT_TRUE(deliver(handler, event_of(test::numbered(test::sample("flag"), i))).ok);
    }
    EXPECT_EQ(receiver.requests().size(), 20u);
    EXPECT_EQ(receiver.connections(), 1u);
    EXPECT_EQ(handler.connections_opened(), 1u);
}

TEST(ForwardHandler, ClassifiesAnswersForTheSpool) {
    test::TestReceiver receiver;
    receiver.script({{503, {{"Retry-After", "3"}}, "busy"},
                     {400, {}, std::string(2000, 'x')},
                     {302, {{"Location", "https://elsewhere/"}}, ""}});
    ForwardHandler handler("fwd",
                           config_for("http://127.0.0.1:" + std::to_string(receiver.port()) + "/"));
    const auto event = event_of(test::sample("flag"));
    const auto busy = deliver(handler, event);
    EXPECT_FALSE(busy.ok);
    EXPECT_FALSE(busy.permanent);
    EXPECT_EQ(busy.retry_after, 3000ms);
    EXPECT_EQ(busy.error, "HTTP 503 from http://127.0.0.1:" + std::to_string(receiver.port()));
    EXPECT_EQ(busy.details["response"], "busy");
    const auto bad = deliver(handler, event);
    EXPECT_TRUE(bad.permanent);
    EXPECT_EQ(bad.details["http_status"], 400);
    EXPECT_EQ(bad.details["response"].get<std::string>().size(), forward_log_excerpt_bytes);
    const auto moved = deliver(handler, event);
    EXPECT_TRUE(moved.permanent);
    EXPECT_NE(moved.error.find("redirects are not followed"), std::string::npos) << moved.error;
    EXPECT_EQ(receiver.requests().size(), 3u);  // the redirect was not followed
}

TEST(ForwardHandler, TimesOutOnASilentDestination) {
    test::TestReceiver receiver;
    receiver.script({{200, {}, "", true}});
    auto c = config_for("http://127.0.0.1:" + std::to_string(receiver.port()) + "/");
    c.timeout = 200ms;
    ForwardHandler handler("fwd", c);
    const auto outcome = deliver(handler, event_of(test::sample("flag")));
    EXPECT_FALSE(outcome.ok);
    EXPECT_FALSE(outcome.permanent);
    EXPECT_EQ(outcome.error, "timed out after 200 ms (timeout_ms)");
}

TEST(ForwardHandler, RefusedConnectionIsARetryableFailure) {
    std::uint16_t closed_port;
    {
        test::TestReceiver gone;
        closed_port = gone.port();
    }
    ForwardHandler handler("fwd", config_for("http://127.0.0.1:" + std::to_string(closed_port)));
    const auto outcome = deliver(handler, event_of(test::sample("flag")));
    EXPECT_FALSE(outcome.ok);
    EXPECT_FALSE(outcome.permanent);
    EXPECT_EQ(outcome.error, "connect to http://127.0.0.1:" + std::to_string(closed_port) +
                                 ": Connection refused");
}

TEST(ForwardHandler, TlsWithTheRightCaIsDeliveredAndAWrongCaIsRefused) {
    test::TempDir dir;
    std::filesystem::create_directories(dir / "right");
    std::filesystem::create_directories(dir / "wrong");
    const auto ca = test::make_test_ca(dir / "right");
    const auto other = test::make_test_ca(dir / "wrong");
    test::TestReceiver receiver(ca.server_cert, ca.server_key);
    const auto url = "https://127.0.0.1:" + std::to_string(receiver.port()) + "/hec";

    auto good = config_for(url);
    good.ca_file = ca.ca_cert;
    ForwardHandler trusted("fwd", good);
    const auto ok = deliver(trusted, event_of(test::sample("flag")));
    EXPECT_TRUE(ok.ok) << ok.error;
    ASSERT_TRUE(receiver.wait_for(1));
    EXPECT_EQ(receiver.requests().at(0).target, "/hec");

    auto bad = config_for(url);
    bad.ca_file = other.ca_cert;
    ForwardHandler untrusted("fwd", bad);
    const auto refused = deliver(untrusted, event_of(test::sample("flag")));
    EXPECT_FALSE(refused.ok);
    EXPECT_EQ(refused.error, "TLS handshake with " + url.substr(0, url.size() - 4) +
                                 ": self-signed certificate in certificate chain");
    EXPECT_EQ(receiver.requests().size(), 1u);  // nothing was sent over the untrusted connection

    // By name: SNI and hostname verification against the certificate's DNS name.
    auto by_name = config_for("https://localhost:" + std::to_string(receiver.port()) + "/hec");
    by_name.ca_file = ca.ca_cert;
    ForwardHandler named("fwd", by_name);
    const auto named_ok = deliver(named, event_of(test::sample("flag")));
    EXPECT_TRUE(named_ok.ok) << named_ok.error;

    // The system store does not know the test CA either.
    ForwardHandler system_store("fwd", config_for(url));
    EXPECT_FALSE(deliver(system_store, event_of(test::sample("flag"))).ok);
}

TEST(ForwardHandler, TemplateThatCannotRenderIsDeadAtOnce) {
    test::TestReceiver receiver;
    auto c = config_for("http://127.0.0.1:" + std::to_string(receiver.port()) + "/");
    c.body = BodyTemplate::compile(Json::parse(R"({"site": "{/payload/siteName}"})")).value();
    ForwardHandler handler("fwd", c);
    const auto outcome = deliver(handler, event_of(test::sample("flag")));
    EXPECT_TRUE(outcome.permanent);
    EXPECT_EQ(outcome.error, "body template: /payload/siteName is not in the event");
    EXPECT_TRUE(receiver.requests().empty());
}

// A delivery waiting for a slot holds only its event: its body is rendered when its turn comes,
// and one that cannot be rendered then gives the slot to the next.
TEST(ForwardHandler, AWaitingDeliveryIsRenderedOnlyWhenItsTurnComes) {
    test::TestReceiver receiver;
    receiver.script({{200, {}, "", true}});  // the first request is never answered
    auto c = config_for("http://127.0.0.1:" + std::to_string(receiver.port()) + "/");
    c.max_concurrent = 1;
    c.timeout = 2s;
    c.body = BodyTemplate::compile(Json::parse(R"({"site": "{/payload/siteName}"})")).value();
    ForwardHandler handler("fwd", c);
    const auto flag = [](bool with_site) {
        auto doc = Json::parse(test::sample("flag"));
        if (with_site) doc["payload"]["siteName"] = "www";
        return event_of(doc.dump());
    };
    std::vector<std::future<DeliveryOutcome>> f;
    for (const bool with_site : {true, false, true}) {
        auto promise = std::make_shared<std::promise<DeliveryOutcome>>();
        f.push_back(promise->get_future());
        handler.deliver(flag(with_site),
                        [promise](DeliveryOutcome o) { promise->set_value(std::move(o)); });
    }
    // The second cannot be rendered, but nobody tried yet: the first holds the slot.
    EXPECT_EQ(f[1].wait_for(0s), std::future_status::timeout);
    ASSERT_EQ(f[0].wait_for(20s), std::future_status::ready);
    EXPECT_EQ(f[0].get().error, "timed out after 2000 ms (timeout_ms)");
    ASSERT_EQ(f[1].wait_for(20s), std::future_status::ready);
    const auto second = f[1].get();
    EXPECT_TRUE(second.permanent);
    EXPECT_EQ(second.error, "body template: /payload/siteName is not in the event");
    ASSERT_EQ(f[2].wait_for(20s), std::future_status::ready);
    const auto third = f[2].get();
    EXPECT_TRUE(third.ok) << third.error;
    ASSERT_EQ(receiver.requests().size(), 2u);
    EXPECT_EQ(receiver.requests().at(1).body, R"({"site":"www"})");
}

// ---- config --------------------------------------------------------------------------------

Result<Config> forward_config(const std::string& handler) {
    return parse_config(R"({"listen": ["127.0.0.1:0"],
        "endpoints": [{"path": "/a", "signing_keys": [{"value": "k"}],
                       "routes": [{"types": ["*"], "handlers": ["fwd"]}]}],
        "handlers": {"fwd": )" +
                            handler + "}}",
                        "test.json", ".");
}

TEST(ForwardConfig, ErrorsNameTheKeyPath) {
    auto error = [](const std::string& h) {
        auto r = forward_config(h);
        return r ? std::string("accepted") : r.error();
    };
    EXPECT_EQ(error(R"({"kind": "forward"})"),
              "test.json: handlers.fwd: missing required key \"url\"");
    EXPECT_EQ(error(R"({"kind": "forward", "url": "smtp://x"})"),
              "test.json: handlers.fwd.url: must start with https:// or http://");
    EXPECT_EQ(error(R"({"kind": "forward", "url": "https://x", "method": "GET"})"),
              "test.json: handlers.fwd.method: must be \"POST\", \"PUT\" or \"PATCH\"");
    EXPECT_EQ(error(R"({"kind": "forward", "url": "https://x", "headers": {"Host": "y"}})"),
              "test.json: handlers.fwd.headers.Host: is set by the handler itself");
    EXPECT_EQ(error(R"({"kind": "forward", "url": "https://x", "headers": {"X-A": "a\r\nB: c"}})"),
              "test.json: handlers.fwd.headers.X-A: must not contain line breaks or NUL");
    EXPECT_EQ(error(R"({"kind": "forward", "url": "http://x", "tls": {}})"),
              "test.json: handlers.fwd.tls: applies to https:// URLs only");
    EXPECT_EQ(
        error(R"({"kind": "forward", "url": "https://x", "tls": {"ca_file": "/nonexistent.pem"}})")
            .rfind("test.json: handlers.fwd.tls.ca_file: cannot load CA certificates from "
                   "/nonexistent.pem",
                   0),
        0u);
    EXPECT_EQ(error(R"({"kind": "forward", "url": "https://x", "body": {"t": "{/type"}})"),
              "test.json: handlers.fwd.body: /t: unterminated placeholder \"{/type\"");
    EXPECT_EQ(error(R"({"kind": "forward", "url": "https://x", "sign": {"header": "X-S"}})"),
              "test.json: handlers.fwd.sign: missing required key \"key\"");
    EXPECT_EQ(error(R"({"kind": "forward", "url": "https://x", "retries": 3})"),
              "test.json: handlers.fwd.retries: unknown key");
}

TEST(ForwardConfig, SecretsComeFromKeySourcesAndStayOutOfTheSummary) {
    ::setenv("SIGSCI_TEST_HOOK_URL", "https://hooks.example.com/services/SECRET", 1);
    ::setenv("SIGSCI_TEST_TOKEN", "Splunk 1234-SECRET", 1);
    auto r = forward_config(R"({"kind": "forward", "url": {"env": "SIGSCI_TEST_HOOK_URL"},
        "headers": {"Authorization": {"env": "SIGSCI_TEST_TOKEN"}},
        "tls": {"insecure_skip_verify": true}})");
    ASSERT_TRUE(r) << r.error();
    const auto& spec = r.value().handlers.at(0);
    EXPECT_EQ(spec.summary, "POST https://hooks.example.com:443 (raw envelope, at most 8 at once)");
    bool warned = false;
    for (const auto& w : r.value().warnings)
        warned |= w.starts_with("handlers.fwd.tls.insecure_skip_verify");
    EXPECT_TRUE(warned);
}

// ---- whole daemons -------------------------------------------------------------------------

class ForwardDaemonTest : public ::testing::Test {
  protected:
    void SetUp() override {
        logs = std::make_shared<test::MemorySink>();
        log::configure(log::Format::json, log::Level::info, logs);
    }
    void TearDown() override {
        for (auto& d : daemons) d->shutdown();
        log::configure(log::Format::json, log::Level::info);
    }

    Daemon& start(const std::string& name, const std::string& text) {
        test::write_file(dir / (name + ".json"), text);
        auto cfg = load_config(dir / (name + ".json"));
        EXPECT_TRUE(cfg) << cfg.error();
        daemons.push_back(std::make_unique<Daemon>(std::move(cfg).value()));
        daemons.back()->start();
        return *daemons.back();
    }

    bool logged(const std::function<bool(Json&)>& pred) { return logs->wait_for_record(pred); }

    test::TempDir dir;
    std::shared_ptr<test::MemorySink> logs;
    std::vector<std::unique_ptr<Daemon>> daemons;
};

std::string forwarding_daemon(const std::string& url, const std::string& extra = "") {
    return R"({"listen": ["127.0.0.1:0"], "threads": 1,
        "endpoints": [{"path": "/sigsci/a", "signing_keys": [{"value": "key-a"}],
                       "routes": [{"types": ["*"], "handlers": ["fwd"]}]}],
        "handlers": {"fwd": {"kind": "forward", "url": ")" +
           url + "\"" + extra + R"(}},
        "spool": {"path": "a.db", "retry": {"initial_delay_ms": 1, "max_delay_ms": 5, "max_attempts": 5}}})";
}

int post(std::uint16_t port, const std::string& path, const std::string& body,
         const std::string& key) {
    test::RawClient c(port);
    c.send(test::post(path, body, to_hex(hmac_sha256(key, body))));
    return c.read_response().status;
}

TEST_F(ForwardDaemonTest, RetriesA503ThenDeliversWithTheSameEventId) {
    test::TestReceiver receiver;
    receiver.script({{503, {}, "down"}, {503, {}, "down"}});
    auto& d = start("a", forwarding_daemon("http://127.0.0.1:" + std::to_string(receiver.port())));
    ASSERT_EQ(post(d.ports().at(0), "/sigsci/a", test::sample("flag"), "key-a"), 200);
    ASSERT_TRUE(d.wait_deliveries_idle(10s));
    ASSERT_EQ(receiver.requests().size(), 3u);
    for (const auto& r : receiver.requests()) EXPECT_EQ(r.body, test::sample("flag"));
    std::string id;
    EXPECT_TRUE(logged([&](Json& j) {
        if (j["msg"] != "delivery" || j["attempt"] != 1) return false;
        id = j["event_id"];
        return j["status"] == "failed" && j["http_status"] == 503 && j["response"] == "down";
    }));
    EXPECT_TRUE(logged([&](Json& j) {
        return j["msg"] == "delivery" && j["attempt"] == 3 && j["status"] == "delivered" &&
               j["event_id"] == id && j["handler"] == "fwd";
    }));
}

TEST_F(ForwardDaemonTest, A400IsDeadLetteredAtOnceAndARetryAfterIsHonoured) {
    test::TestReceiver receiver;
    receiver.script({{400, {}, R"({"error":"bad token"})"}, {429, {{"Retry-After", "120"}}, ""}});
    auto& d = start("a", forwarding_daemon("http://127.0.0.1:" + std::to_string(receiver.port())));
    ASSERT_EQ(post(d.ports().at(0), "/sigsci/a", test::sample("flag"), "key-a"), 200);
    EXPECT_TRUE(logged([&](Json& j) {
        return j["msg"] == "delivery" && j["attempt"] == 1 && j["status"] == "dead" &&
               j["http_status"] == 400 && j["response"] == R"({"error":"bad token"})";
    }));
    ASSERT_EQ(post(d.ports().at(0), "/sigsci/a", test::sample("expireFlag"), "key-a"), 200);
    // max_delay_ms is 5 here, so the 120 s asked for is capped to it: the retry is still
    // scheduled no sooner than the usual backoff and no later than max_delay_ms.
    EXPECT_TRUE(logged([&](Json& j) {
        return j["msg"] == "delivery" && j["status"] == "failed" && j["http_status"] == 429 &&
               j["retry_after_ms"] == 120000 && j["retry_in_ms"] == 5;
    }));
    ASSERT_TRUE(d.wait_deliveries_idle(10s));
    EXPECT_EQ(receiver.requests().size(), 3u);  // 400 once (dead), 429 then 200
}

// The first daemon forwards everything, re-signed, to the second, which archives it.
TEST_F(ForwardDaemonTest, ChainedDaemonsDeliverEveryEventAsTheFirstReceivedIt) {
    auto& second = start("b", R"({"listen": ["127.0.0.1:0"], "threads": 1,
        "endpoints": [{"path": "/sigsci/b", "signing_keys": [{"value": "key-b"}],
                       "routes": [{"types": ["*"], "handlers": ["archive"]}]}],
        "handlers": {"archive": {"kind": "file", "path": "b-events.jsonl"}},
        "spool": {"path": "b.db"}})");
    auto& first = start(
        "a",
        forwarding_daemon("http://127.0.0.1:" + std::to_string(second.ports().at(0)) + "/sigsci/b",
                          R"(, "sign": {"key": {"value": "key-b"}})"));
    const auto types = test::sample_types();
    for (const auto& type : types) {
        ASSERT_EQ(post(first.ports().at(0), "/sigsci/a", test::sample(type), "key-a"), 200) << type;
    }
    ASSERT_TRUE(first.wait_deliveries_idle(20s));
    ASSERT_TRUE(second.wait_deliveries_idle(20s));
    const auto lines = test::read_lines(dir / "b-events.jsonl");
    ASSERT_EQ(lines.size(), types.size());
    std::set<std::string> seen;
    for (const auto& line : lines) {
        auto record = Json::parse(line);
        const auto type = record["type"].get<std::string>();
        seen.insert(type);
        const auto original = Json::parse(test::sample(type));  // items() of a temporary dangles
        for (const auto& [key, value] : original.items())
            EXPECT_EQ(record[key], value) << type << "." << key;
    }
    EXPECT_EQ(seen.size(), types.size());
}

}  // namespace
}  // namespace sigsci
