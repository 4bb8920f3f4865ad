// The /metrics exposition: counting, escaping, histograms, and the text format's rules checked
// line by line; then the admin listener of a running daemon.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "sigsci/daemon.hpp"
#include "sigsci/dispatcher.hpp"
#include "sigsci/log.hpp"
#include "sigsci/metrics.hpp"
#include "sigsci/signature.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

// Checks an exposition against the Prometheus text format (0.0.4) and returns every sample as
// "name{labels}" -> value. Any violation is a test failure naming the line.
std::map<std::string, double> parse_exposition(const std::string& text) {
    static const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .*)");
    static const std::regex type(
        R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped))");
    static const std::regex sample_re(
        R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*")(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*")*\})? ([-+]?([0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?|Inf)|NaN))");
    std::map<std::string, double> samples;
    std::map<std::string, std::string> types;  // family -> type
    std::set<std::string> finished;            // families whose samples have ended
    std::string current;                       // family of the last sample or TYPE
    EXPECT_FALSE(text.empty());
    EXPECT_EQ(text.back(), '\n') << "the exposition must end with a newline";
    std::istringstream in(text);
    std::string line;
    auto family_of = [&](const std::string& name) {
        for (const char* suffix : {"_bucket", "_sum", "_count"}) {
            const std::string s(suffix);
            if (name.size() > s.size() && name.ends_with(s)) {
                const auto base = name.substr(0, name.size() - s.size());
                if (types.count(base) && types[base] == "histogram") return base;
            }
        }
        return name;
    };
    while (std::getline(in, line)) {
        std::smatch m;
        if (std::regex_match(line, m, help)) continue;
        if (std::regex_match(line, m, type)) {
            EXPECT_EQ(types.count(m[1]), 0u) << "second TYPE line: " << line;
            types[m[1]] = m[2];
            if (!current.empty()) finished.insert(current);
            current = m[1];
            continue;
        }
        EXPECT_TRUE(std::regex_match(line, m, sample_re)) << "not a valid sample line: " << line;
        if (m.empty()) continue;
        const std::string name = m[1];
        const auto family = family_of(name);
        EXPECT_EQ(finished.count(family), 0u) << "samples of " << family << " are not together";
        EXPECT_TRUE(types.count(family)) << "sample before its TYPE: " << line;
        if (family != current) {
            if (!current.empty()) finished.insert(current);
            current = family;
        }
        const std::string key = line.substr(0, line.rfind(' '));
        EXPECT_EQ(samples.count(key), 0u) << "duplicate series: " << key;
        const auto value_text = line.substr(line.rfind(' ') + 1);
        const double value = value_text == "+Inf" ? INFINITY : std::stod(value_text);
        if (types[family] == "counter") {
            EXPECT_GE(value, 0) << line;
        }
        samples[key] = value;
    }
    return samples;
}

TEST(Metrics, EmptyExpositionFollowsTheFormat) {
    Metrics m;
    const auto samples = parse_exposition(m.render({}));
    EXPECT_EQ(samples.at("sigsci_webhookd_build_info{version=\"" SIGSCI_VERSION "\"}"), 1);
    EXPECT_EQ(samples.at("sigsci_webhookd_spool_backlog"), 0);
    EXPECT_EQ(samples.at("sigsci_webhookd_open_connections"), 0);
    EXPECT_GT(samples.at("sigsci_webhookd_start_time_seconds"), 1.7e9);
}

TEST(Metrics, CountsRequestsEventsFailuresAndGauges) {
    Metrics m;
    m.request("/sigsci/prod", 200);
    m.request("/sigsci/prod", 200);
    m.request("/sigsci/prod", 401);
    m.request("", 404);
    m.signature_failure("/sigsci/prod", "mismatch");
    m.event("/sigsci/prod", "flag");
    m.event("/sigsci/prod", "flag");
    m.duplicate("/sigsci/prod");
    m.reload(true);
    m.reload(false);
    m.reload(false);
    m.connection_opened();
    m.connection_opened();
    m.connection_closed();
    m.overloaded(Overload::max_connections_per_ip);
    m.overloaded(Overload::max_unverified_body_bytes);
    m.overloaded(Overload::max_unverified_body_bytes);
    m.overloaded(Overload::max_unverified_body_bytes_per_ip);
    const auto s = parse_exposition(m.render({7, 2, 3}));
    EXPECT_EQ(s.at(R"(sigsci_webhookd_overloaded_total{limit="max_connections_per_ip"})"), 1);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_overloaded_total{limit="max_unverified_body_bytes"})"), 2);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_overloaded_total{limit="max_unverified_body_bytes_per_ip"})"),
              1);
    for (const auto* none :
         {"max_connections", "max_pending_events", "max_pending_bytes", "shutting_down"}) {
        EXPECT_EQ(s.at(std::string(R"(sigsci_webhookd_overloaded_total{limit=")") + none + "\"}"),
                  0)
            << none;
    }
    EXPECT_EQ(s.at(R"(sigsci_webhookd_requests_total{endpoint="/sigsci/prod",status="200"})"), 2);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_requests_total{endpoint="/sigsci/prod",status="401"})"), 1);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_requests_total{endpoint="none",status="404"})"), 1);
    EXPECT_EQ(
        s.at(
            R"(sigsci_webhookd_signature_failures_total{endpoint="/sigsci/prod",reason="mismatch"})"),
        1);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_events_total{endpoint="/sigsci/prod",type="flag"})"), 2);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_duplicate_events_total{endpoint="/sigsci/prod"})"), 1);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_reloads_total{result="ok"})"), 1);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_reloads_total{result="failed"})"), 2);
    EXPECT_EQ(s.at("sigsci_webhookd_open_connections"), 1);
    EXPECT_EQ(s.at("sigsci_webhookd_spool_backlog"), 7);
    EXPECT_EQ(s.at("sigsci_webhookd_spool_dead"), 2);
    EXPECT_EQ(s.at("sigsci_webhookd_spool_checkpoint_failures_total"), 3);
    EXPECT_EQ(m.requests(), 4u);
}

// With the spool on, the backlog by handler: every handler with deliveries waiting, and at 0
// every other that has had a delivery, so that its series stays once it has caught up. The
// spool-off dispatcher does not count by handler, and the family is left out.
TEST(Metrics, HandlerBacklogShowsWaitingHandlersAndZeroForTheOthers) {
    Metrics m;
    m.delivery("archive", "delivered", 0.001);
    m.delivery("page", "failed", 0.5);
    SinkStats st{5, 0, 0, true, {{"block-ip", 3}, {"page", 2}}};
    const auto s = parse_exposition(m.render(st));
    EXPECT_EQ(s.at(R"(sigsci_webhookd_handler_backlog{handler="archive"})"), 0);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_handler_backlog{handler="block-ip"})"), 3);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_handler_backlog{handler="page"})"), 2);
    EXPECT_EQ(std::count_if(s.begin(), s.end(),
                            [](const auto& kv) {
                                return kv.first.starts_with("sigsci_webhookd_handler_backlog");
                            }),
              3);
    st.by_handler = false;
    st.backlog_by_handler.clear();
    EXPECT_EQ(m.render(st).find("handler_backlog"), std::string::npos);
}

TEST(Metrics, DeliveryHistogramIsCumulativeAndMatchesItsCount) {
    Metrics m;
    m.delivery("archive", "delivered", 0.0005);  // first bucket
    m.delivery("archive", "delivered", 0.003);   // le=0.005
    m.delivery("archive", "failed", 0.2);        // le=0.25
    m.delivery("archive", "dead", 120);          // only +Inf
    const auto s = parse_exposition(m.render({}));
    auto bucket = [&](const char* le) {
        return s.at(
            std::string(
                R"(sigsci_webhookd_delivery_duration_seconds_bucket{handler="archive",le=")") +
            le + "\"}");
    };
    EXPECT_EQ(bucket("0.001"), 1);
    EXPECT_EQ(bucket("0.005"), 2);
    EXPECT_EQ(bucket("0.1"), 2);
    EXPECT_EQ(bucket("0.25"), 3);
    EXPECT_EQ(bucket("60"), 3);
    EXPECT_EQ(bucket("+Inf"), 4);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_delivery_duration_seconds_count{handler="archive"})"), 4);
    EXPECT_NEAR(s.at(R"(sigsci_webhookd_delivery_duration_seconds_sum{handler="archive"})"),
                120.2035, 1e-9);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_deliveries_total{handler="archive",outcome="delivered"})"),
              2);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_deliveries_total{handler="archive",outcome="dead"})"), 1);
    EXPECT_EQ(m.deliveries(), 4u);
}

TEST(Metrics, SpoolCommitHistogramHasItsOwnFinerBuckets) {
    Metrics m;
    m.spool_commit(0.0004, 10);  // le=0.0005
    m.spool_commit(0.0015, 20);  // le=0.002
    m.spool_commit(1.5, 30);     // le=2.5
    const auto s = parse_exposition(m.render({}));
    auto bucket = [&](const std::string& le) {
        return s.at(R"(sigsci_webhookd_spool_commit_duration_seconds_bucket{le=")" + le + "\"}");
    };
    EXPECT_EQ(bucket("0.0005"), 1);
    EXPECT_EQ(bucket("0.001"), 1);
    EXPECT_EQ(bucket("0.002"), 2);
    EXPECT_EQ(bucket("1"), 2);
    EXPECT_EQ(bucket("2.5"), 3);
    EXPECT_EQ(bucket("+Inf"), 3);
    EXPECT_EQ(s.at("sigsci_webhookd_spool_commit_duration_seconds_count"), 3);
    EXPECT_NEAR(s.at("sigsci_webhookd_spool_commit_duration_seconds_sum"), 1.5019, 1e-9);
    EXPECT_EQ(s.at("sigsci_webhookd_spool_committed_events_total"), 60);
}

TEST(Metrics, LabelValuesAreEscaped) {
    EXPECT_EQ(escape_label_value(R"(a"b\c)"), R"(a\"b\\c)");
    EXPECT_EQ(escape_label_value("line\nbreak"), "line\\nbreak");
    Metrics m;
    m.event("/sigsci/x", "evil\"} 1\nsigsci_webhookd_forged 1");
    const auto s = parse_exposition(m.render({}));
    // The type stays inside its label value; no forged series appears.
    for (const auto& [key, value] : s)
        EXPECT_FALSE(key.starts_with("sigsci_webhookd_forged")) << key;
    EXPECT_EQ(
        s.at(
            R"(sigsci_webhookd_events_total{endpoint="/sigsci/x",type="evil\"} 1\nsigsci_webhookd_forged 1"})"),
        1);
}

TEST(Metrics, EventTypesPerEndpointAreCapped) {
    Metrics m;
    for (std::size_t i = 0; i < Metrics::max_types + 10; ++i)
        m.event("/sigsci/x", "type" + std::to_string(i));
    m.event("/sigsci/x", "type0");  // a type already counted keeps its own series
    const auto s = parse_exposition(m.render({}));
    std::size_t series = 0;
    for (const auto& [key, value] : s) series += key.starts_with("sigsci_webhookd_events_total");
    EXPECT_EQ(series, Metrics::max_types + 1);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_events_total{endpoint="/sigsci/x",type="_other"})"), 10);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_events_total{endpoint="/sigsci/x",type="type0"})"), 2);
}

// The admin listener of a daemon in this process.
class AdminListenerTest : public ::testing::Test {
  protected:
    void SetUp() override {
        test::write_file(dir / "key", "admin-test-key\n");
        test::write_file(dir / "config.json", R"({
          "listen": ["127.0.0.1:0"],
          "threads": 2,
          "admin": {"listen": ["127.0.0.1:0"]},
          "endpoints": [{"path": "/sigsci/test", "signing_keys": [{"file": "key"}],
                         "routes": [{"types": ["*"], "handlers": ["archive"]}]}],
          "handlers": {"archive": {"kind": "file", "path": "events.jsonl"}},
          "spool": {"path": "spool.db"}
        })");
        auto cfg = load_config(dir / "config.json");
        ASSERT_TRUE(cfg) << cfg.error();
        daemon = std::make_unique<Daemon>(std::move(cfg).value());
        daemon->start();
        port = daemon->ports().at(0);
        admin = daemon->admin_ports().at(0);
    }
    void TearDown() override {
        if (daemon) daemon->shutdown();
    }

    test::HttpResponse get(std::uint16_t p, const std::string& path,
                           const std::string& method = "GET") {
        test::RawClient c(p);
        c.send(method + " " + path + " HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        return c.read_response();
    }

    test::TempDir dir;
    std::unique_ptr<Daemon> daemon;
    std::uint16_t port = 0;
    std::uint16_t admin = 0;
};

TEST_F(AdminListenerTest, MetricsCountWhatTheWebhookListenerDid) {
    const auto body = test::sample("flag");
    {
        test::RawClient c(port);
        c.send(test::post("/sigsci/test", body, to_hex(hmac_sha256("admin-test-key", body))));
        ASSERT_EQ(c.read_response().status, 200);
        c.send(test::post("/sigsci/test", body, std::string(64, '0')));
        ASSERT_EQ(c.read_response().status, 401);
    }
    ASSERT_TRUE(daemon->wait_deliveries_idle(std::chrono::seconds(10)));
    const auto r = get(admin, "/metrics");
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(r.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    const auto s = parse_exposition(r.body);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_requests_total{endpoint="/sigsci/test",status="200"})"), 1);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_requests_total{endpoint="/sigsci/test",status="401"})"), 1);
    EXPECT_EQ(
        s.at(
            R"(sigsci_webhookd_signature_failures_total{endpoint="/sigsci/test",reason="mismatch"})"),
        1);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_events_total{endpoint="/sigsci/test",type="flag"})"), 1);
    // The delivery is counted once its outcome is committed, which wait_deliveries_idle awaits.
    EXPECT_EQ(s.at(R"(sigsci_webhookd_deliveries_total{handler="archive",outcome="delivered"})"),
              1);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_delivery_duration_seconds_count{handler="archive"})"), 1);
    EXPECT_EQ(s.at("sigsci_webhookd_spool_backlog"), 0);
    // The one event took one durable commit (outcome-only commits are not counted).
    EXPECT_EQ(s.at("sigsci_webhookd_spool_commit_duration_seconds_count"), 1);
    EXPECT_EQ(s.at(R"(sigsci_webhookd_spool_commit_duration_seconds_bucket{le="+Inf"})"), 1);
    EXPECT_GT(s.at("sigsci_webhookd_spool_commit_duration_seconds_sum"), 0);
    EXPECT_EQ(s.at("sigsci_webhookd_spool_committed_events_total"), 1);
    EXPECT_EQ(s.at("sigsci_webhookd_spool_checkpoint_failures_total"), 0);  // from the spool
}

TEST_F(AdminListenerTest, AdminServesOnlyMetricsAndHealthz) {
    EXPECT_EQ(get(admin, "/healthz").status, 200);
    EXPECT_EQ(get(admin, "/sigsci/test", "POST").status, 404);  // webhooks are not served here
    EXPECT_EQ(get(admin, "/metrics", "POST").status, 405);
    EXPECT_EQ(get(admin, "/metrics", "POST").header("allow"), "GET");
    EXPECT_EQ(get(port, "/metrics").status, 404);  // nor metrics on the webhook listener
}

TEST_F(AdminListenerTest, OpenConnectionsCountsWebhookConnectionsOnly) {
    test::RawClient a(port);
    test::RawClient b(port);
    // A request on each proves both were accepted before the scrape.
    for (auto* c : {&a, &b}) {
        c->send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        ASSERT_EQ(c->read_response().status, 200);
    }
    const auto s = parse_exposition(get(admin, "/metrics").body);
    EXPECT_EQ(s.at("sigsci_webhookd_open_connections"), 2);
}

}  // namespace
}  // namespace sigsci
