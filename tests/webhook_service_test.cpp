#include "sigsci/webhook_service.hpp"

#include <gtest/gtest.h>

#include "sigsci/clock.hpp"
#include "sigsci/log.hpp"
#include "sigsci/signature.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

class FakeSink final : public EventSink {
  public:
    void submit(const EventPtr& event, std::vector<HandlerPtr> handlers, SubmitDone done) override {
        if (result != SubmitResult::Status::accepted) {
            done({result, result == SubmitResult::Status::duplicate ? "original-id" : event->id,
                  "sink said no", overload});
            return;
        }
        events.push_back(event);
        routed.push_back({});
        for (const auto& h : handlers) routed.back().push_back(h->name());
        done({SubmitResult::Status::accepted, event->id, {}});
    }
    bool wait_idle(std::chrono::milliseconds) override { return true; }
    void stop(std::chrono::milliseconds, const std::function<void()>&,
              std::chrono::milliseconds) override {}
    SinkStats stats() const override { return {7, 3}; }
    void set_pending_limits(PendingLimits) override {}

    SubmitResult::Status result = SubmitResult::Status::accepted;
    Overload overload = Overload::max_pending_events;
    std::vector<EventPtr> events;
    std::vector<std::vector<std::string>> routed;
};

const char* config_json = R"({
  "listen": ["127.0.0.1:0"],
  "limits": {"max_body_bytes": 1000},
  "endpoints": [{"path": "/hook", "signing_keys": [{"value": "old"}, {"value": "new"}],
                 "routes": [{"types": ["flag"], "handlers": ["b"]}, {"types": ["*"], "handlers": ["a", "b"]}]},
                {"path": "/quiet", "signing_keys": [{"value": "q"}]}],
  "handlers": {"a": {"kind": "log"}, "b": {"kind": "log", "payload": "none"}}
})";

class WebhookServiceTest : public ::testing::Test {
  protected:
    void SetUp() override {
        sink_log = std::make_shared<test::MemorySink>();
        log::configure(log::Format::json, log::Level::debug, sink_log);
        auto cfg = parse_config(config_json, "t.json", ".");
        ASSERT_TRUE(cfg) << cfg.error();
        service = std::make_unique<WebhookService>(Runtime::build(std::move(cfg).value()));
        service->attach(sink, &metrics);
        rt = service->snapshot();
    }
    void TearDown() override { log::configure(log::Format::json, log::Level::info); }

    std::variant<Response, const EndpointConfig*> head(std::string_view method,
                                                       std::string_view target,
                                                       std::optional<std::uint64_t> length = 10) {
        return service->route_head(*rt, RequestHead{method, target, length, {}, well_formed});
    }
    const EndpointConfig& hook() { return *rt->config.find_endpoint("/hook"); }
    // A signature that some body could match: the head alone does not refuse it.
    const std::string well_formed = std::string(64, 'a');

    // The request path after the head, as the server runs it: check, submit, answer.
    Response handle_body(const EndpointConfig& endpoint, std::string_view signature,
                         std::string body) {
        auto verdict = service->check_body(*rt, endpoint, signature, std::move(body));
        if (auto* r = std::get_if<Response>(&verdict)) return *r;
        auto accepted = std::get<Accepted>(std::move(verdict));
        const auto event = accepted.event;
        const bool unrouted = accepted.handlers.empty();
        SubmitResult result;
        service->submit(std::move(accepted), [&](SubmitResult r) { result = std::move(r); });
        return service->answer(*event, unrouted, result);
    }

    std::shared_ptr<test::MemorySink> sink_log;
    Metrics metrics;
    FakeSink sink;
    std::unique_ptr<WebhookService> service;
    std::shared_ptr<const Runtime> rt;
};

TEST_F(WebhookServiceTest, UnknownPathIs404) {
    auto d = head("POST", "/nope");
    ASSERT_TRUE(std::holds_alternative<Response>(d));
    EXPECT_EQ(std::get<Response>(d).status, 404);
    EXPECT_EQ(std::get<Response>(d).body, R"({"error":"not found"})");
}

TEST_F(WebhookServiceTest, WrongMethodIs405WithAllowPost) {
    for (auto method : {"GET", "PUT", "DELETE", "HEAD", "PATCH"}) {
        auto d = head(method, "/hook");
        ASSERT_TRUE(std::holds_alternative<Response>(d)) << method;
        EXPECT_EQ(std::get<Response>(d).status, 405);
        EXPECT_EQ(std::get<Response>(d).allow, "POST");
    }
}

TEST_F(WebhookServiceTest, PathIsCheckedBeforeMethodBeforeSize) {
    EXPECT_EQ(std::get<Response>(head("GET", "/nope", 5000)).status, 404);
    EXPECT_EQ(std::get<Response>(head("GET", "/hook", 5000)).status, 405);
    EXPECT_EQ(std::get<Response>(head("POST", "/hook", 1001)).status, 413);
    EXPECT_TRUE(std::get<Response>(head("POST", "/hook", 1001)).close);
}

TEST_F(WebhookServiceTest, BodyAtTheLimitOrChunkedGoesOnToBeRead) {
    EXPECT_TRUE(std::holds_alternative<const EndpointConfig*>(head("POST", "/hook", 1000)));
    EXPECT_TRUE(std::holds_alternative<const EndpointConfig*>(head("POST", "/hook", std::nullopt)));
}

// Step 3 as far as the head tells, after the size: a signature that no body can match is refused
// before the body is read, and the connection closed (its body is left unread).
TEST_F(WebhookServiceTest, ASignatureThatNoBodyCanMatchIs401FromTheHead) {
    const auto with_signature = [&](std::string_view signature, std::uint64_t length = 10) {
        return service->route_head(*rt, RequestHead{"POST", "/hook", length, {}, signature});
    };
    for (const auto& [signature, why] : std::vector<std::pair<std::string, std::string>>{
             {"", "signature missing"},
             {"not-hex", "signature malformed"},
             {std::string(63, 'a'), "signature malformed"},
             {std::string(64, 'g'), "signature malformed"}}) {
        auto d = with_signature(signature);
        ASSERT_TRUE(std::holds_alternative<Response>(d)) << signature;
        const auto& r = std::get<Response>(d);
        EXPECT_EQ(r.status, 401) << signature;
        EXPECT_EQ(r.body, R"({"error":"unauthorized"})");
        EXPECT_EQ(r.error, why);
        EXPECT_TRUE(r.close);
    }
    EXPECT_EQ(std::get<Response>(with_signature("", 1001)).status, 413);  // the size comes first
    EXPECT_TRUE(
        std::holds_alternative<const EndpointConfig*>(with_signature(std::string(64, 'F'))));
}

TEST_F(WebhookServiceTest, OnlyChunkedTransferEncodingIsRead) {
    const auto with_te = [&](std::string_view te) {
        return service->route_head(*rt,
                                   RequestHead{"POST", "/hook", std::nullopt, te, well_formed});
    };
    EXPECT_TRUE(std::holds_alternative<const EndpointConfig*>(with_te("chunked")));
    EXPECT_TRUE(std::holds_alternative<const EndpointConfig*>(with_te("Chunked")));
    for (auto te : {"gzip, chunked", "chunked, gzip", "identity", "gzip"}) {
        auto d = with_te(te);
        ASSERT_TRUE(std::holds_alternative<Response>(d)) << te;
        EXPECT_EQ(std::get<Response>(d).status, 501) << te;
        EXPECT_TRUE(std::get<Response>(d).close) << te;
    }
}

TEST_F(WebhookServiceTest, QueryStringIsIgnoredForRouting) {
    EXPECT_TRUE(std::holds_alternative<const EndpointConfig*>(head("POST", "/hook?source=sigsci")));
}

TEST_F(WebhookServiceTest, HealthzAnswers503UntilReady) {
    EXPECT_EQ(std::get<Response>(head("GET", "/healthz")).status, 503);
    service->set_ready(true);
    EXPECT_EQ(std::get<Response>(head("GET", "/healthz")).status, 200);
    EXPECT_EQ(std::get<Response>(head("POST", "/healthz")).allow, "GET");
}

TEST_F(WebhookServiceTest, EveryVerificationFailureLooksTheSameToTheClient) {
    const std::string body = R"({"type":"flag"})";
    const auto missing = handle_body(hook(), "", body);
    const auto malformed = handle_body(hook(), "abc", body);
    const auto mismatch = handle_body(hook(), to_hex(hmac_sha256("wrong", body)), body);
    for (const auto* r : {&missing, &malformed, &mismatch}) {
        EXPECT_EQ(r->status, 401);
        EXPECT_EQ(r->body, R"({"error":"unauthorized"})");
    }
    EXPECT_EQ(missing.error, "signature missing");
    EXPECT_EQ(malformed.error, "signature malformed");
    EXPECT_EQ(mismatch.error, "signature mismatch");
    EXPECT_TRUE(sink.events.empty());
}

TEST_F(WebhookServiceTest, SignatureIsCheckedBeforeTheBodyIsParsed) {
    const auto r = handle_body(hook(), to_hex(hmac_sha256("wrong", "not json")), "not json");
    EXPECT_EQ(r.status, 401);
}

TEST_F(WebhookServiceTest, SignedButInvalidEnvelopeIs400) {
    const std::string body = R"({"payload":{}})";
    const auto r = handle_body(hook(), to_hex(hmac_sha256("new", body)), body);
    EXPECT_EQ(r.status, 400);
    EXPECT_EQ(r.body, R"({"error":"envelope has no \"type\""})");
    EXPECT_TRUE(sink.events.empty());
}

TEST_F(WebhookServiceTest, AcceptedEventIsRoutedAndAnsweredWithItsId) {
    const auto body = test::sample("flag");
    const auto r = handle_body(hook(), to_hex(hmac_sha256("old", body)), body);
    ASSERT_EQ(r.status, 200);
    ASSERT_EQ(sink.events.size(), 1u);
    EXPECT_EQ(r.body, R"({"id":")" + sink.events[0]->id + R"(","status":"accepted"})");
    EXPECT_EQ(sink.events[0]->body, body);  // the raw bytes, not a re-serialisation
    EXPECT_EQ(sink.events[0]->endpoint, "/hook");
    EXPECT_EQ(sink.routed[0], (std::vector<std::string>{"b", "a"}));
}

TEST_F(WebhookServiceTest, UnroutedEventIsAcceptedAndLogged) {
    const std::string body = R"({"type":"flag"})";
    const auto& quiet = *rt->config.find_endpoint("/quiet");
    const auto r = handle_body(quiet, to_hex(hmac_sha256("q", body)), body);
    EXPECT_EQ(r.status, 200);
    EXPECT_TRUE(sink_log->wait_for([&](const std::string& l) {
        auto j = Json::parse(l);
        return j["msg"] == "unrouted" && j["event_id"] == r.event_id && j["type"] == "flag";
    }));
}

TEST_F(WebhookServiceTest, OverloadedSinkIs503AndCountedByTheLimitItMet) {
    sink.result = SubmitResult::Status::overloaded;
    sink.overload = Overload::max_pending_bytes;
    const std::string body = R"({"type":"flag"})";
    const auto r = handle_body(hook(), to_hex(hmac_sha256("new", body)), body);
    EXPECT_EQ(r.status, 503);
    EXPECT_EQ(r.body, R"({"error":"overloaded"})");
    EXPECT_EQ(r.error, "sink said no");
    const auto text = metrics.render({});
    EXPECT_NE(text.find("sigsci_webhookd_overloaded_total{limit=\"max_pending_bytes\"} 1\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("sigsci_webhookd_overloaded_total{limit=\"max_pending_events\"} 0\n"),
              std::string::npos);
}

TEST_F(WebhookServiceTest, StoreFailureIs503) {
    sink.result = SubmitResult::Status::failed;
    const std::string body = R"({"type":"flag"})";
    const auto r = handle_body(hook(), to_hex(hmac_sha256("new", body)), body);
    EXPECT_EQ(r.status, 503);
    EXPECT_EQ(r.body, R"({"error":"cannot store event"})");
}

TEST_F(WebhookServiceTest, DuplicateIsAnswered200WithTheOriginalId) {
    sink.result = SubmitResult::Status::duplicate;
    const std::string body = R"({"type":"flag"})";
    const auto r = handle_body(hook(), to_hex(hmac_sha256("new", body)), body);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, R"({"id":"original-id","status":"duplicate"})");
    EXPECT_TRUE(r.duplicate);
}

TEST_F(WebhookServiceTest, HealthzReportsBacklogAndDeadLetters) {
    service->set_ready(true);
    EXPECT_EQ(std::get<Response>(head("GET", "/healthz")).body,
              R"({"status":"ok","backlog":7,"dead":3})");
}

}  // namespace
}  // namespace sigsci

namespace sigsci {
namespace {

using std::chrono::seconds;

// 2026-11-29T17:16:26Z
const auto replay_now =
    std::chrono::system_clock::time_point(std::chrono::milliseconds(1795972586000));

ReplayWindow window(int max_age_s, bool accept_unparseable = false) {
    ReplayWindow w;
    w.max_age = seconds(max_age_s);
    w.accept_unparseable = accept_unparseable;
    return w;
}

TEST(ReplayWindow, CreatedIsReadLenientlyAndJudgedAgainstTheWindow) {
    const auto w = window(300);
    EXPECT_EQ(replay_problem(w, std::string("2026-11-29T17:16:26Z"), replay_now), std::nullopt);
    // Offsets and fractional seconds of any length, as Signal Sciences has sent both.
    EXPECT_EQ(replay_problem(w, std::string("2026-11-29T19:12:26.204417893+02:00"), replay_now),
              std::nullopt);
    EXPECT_EQ(replay_problem(w, std::string("2026-11-29T17:11:26.5Z"), replay_now), std::nullopt);
    EXPECT_EQ(replay_problem(w, std::string("2026-11-29T17:11:25.999Z"), replay_now),
              "stale: created 300 s ago (max_age_s 300)");
    EXPECT_EQ(replay_problem(w, std::string("2026-11-29T16:16:26-00:00"), replay_now),
              "stale: created 3600 s ago (max_age_s 300)");
    EXPECT_EQ(replay_problem(w, std::string("2026-11-29T17:17:26Z"), replay_now), std::nullopt);
    EXPECT_EQ(replay_problem(w, std::string("2026-11-29T17:26:26Z"), replay_now),
              "stale: created 600 s in the future (max_future_s 60)");
}

TEST(ReplayWindow, UnparseableCreatedIsRejectedUnlessConfiguredOtherwise) {
    // A `created` that is not a string (a number, null) or is absent reaches here as nullopt.
    for (const std::optional<std::string>& created :
         {std::optional<std::string>("yesterday"), std::optional<std::string>(),
          std::optional<std::string>("2026-11-29T17:16:26.Z"),
          std::optional<std::string>("2026-11-29T17:16:26")}) {
        EXPECT_EQ(replay_problem(window(300), created, replay_now),
                  "stale: created is missing or not an RFC 3339 date")
            << created.value_or("(none)");
        EXPECT_EQ(replay_problem(window(300, true), created, replay_now), std::nullopt);
    }
}

TEST_F(WebhookServiceTest, EventOutsideTheReplayWindowIs401AndNotKept) {
    auto ep = hook();
    ep.replay = window(300);
    auto with_created = [](std::chrono::system_clock::time_point t) {
        return R"({"created":")" + format_rfc3339_ms(t) + R"(","type":"flag","payload":{}})";
    };
    const auto now = std::chrono::system_clock::now();
    const auto fresh = with_created(now - seconds(10));
    EXPECT_EQ(handle_body(ep, to_hex(hmac_sha256("old", fresh)), fresh).status, 200);
    const auto replayed = with_created(now - seconds(3600));
    const auto r = handle_body(ep, to_hex(hmac_sha256("old", replayed)), replayed);
    EXPECT_EQ(r.status, 401);
    EXPECT_EQ(r.body, R"({"error":"unauthorized"})");  // like a bad signature, to the client
    EXPECT_TRUE(r.error.starts_with("stale: created 3")) << r.error;
    const auto ahead = with_created(now + seconds(3600));
    EXPECT_EQ(handle_body(ep, to_hex(hmac_sha256("old", ahead)), ahead).status, 401);
    EXPECT_EQ(sink.events.size(), 1u);  // only the fresh one
}

}  // namespace
}  // namespace sigsci
