// The daemon in-process on 127.0.0.1 port 0, driven over loopback with raw bytes.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "sigsci/daemon.hpp"
#include "sigsci/log.hpp"
#include "sigsci/server.hpp"
#include "sigsci/signature.hpp"
#include "sigsci/spool.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

using test::RawClient;

// A flag event whose body is exactly `size` bytes.
std::string body_of_size(std::size_t size) {
    std::string body = R"({"type":"flag","payload":")";
    body += std::string(size - body.size() - 2, 'x') + "\"}";
    return body;
}

// The head of a POST of `body`, signed with `signature`.
std::string head_of(const std::string& body, const std::string& signature,
                    const std::string& extra = "") {
    return "POST /sigsci/test HTTP/1.1\r\nHost: x\r\n" + extra +
           "X-SigSci-Signature: " + signature +
           "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n";
}

class ServerTest : public ::testing::Test {
  protected:
    void SetUp() override {
        logs = std::make_shared<test::MemorySink>();
        log::configure(log::Format::json, log::Level::debug, logs);
        test::write_file(dir / "key-one", "test-key-one\n");
        test::write_file(dir / "key-two", "test-key-two\n");
    }

    void TearDown() override {
        if (daemon) daemon->shutdown();
        daemon.reset();
        log::configure(log::Format::json, log::Level::info);
    }

    std::string config_text(const std::string& limits, const std::string& listen,
                            const std::string& keys,
                            const std::string& spool = R"({"path": "spool.db"})") const {
        return R"({
          "listen": )" +
               listen + R"(,
          "threads": 2,
          "limits": {)" +
               limits + R"(},
          "endpoints": [
            {"path": "/sigsci/test", "signing_keys": )" +
               keys + R"(,
             "routes": [{"types": ["*"], "handlers": ["archive", "audit"]}]},
            {"path": "/sigsci/unrouted", "signing_keys": [{"file": "key-one"}]}
          ],
          "handlers": {"archive": {"kind": "file", "path": "events.jsonl"},
                       "audit": {"kind": "log", "payload": "summary"}},
          "spool": )" +
               spool + R"(
        })";
    }

    void start(const std::string& limits = "", const std::string& listen = R"(["127.0.0.1:0"])",
               const std::string& keys = R"([{"file": "key-one"}, {"file": "key-two"}])",
               const std::string& spool = R"({"path": "spool.db"})") {
        start_with(config_text(limits, listen, keys, spool));
    }

    // Writes `text` as the config file and starts a daemon on it.
    void start_with(const std::string& text) {
        test::write_file(dir / "config.json", text);
        auto cfg = load_config(dir / "config.json");
        ASSERT_TRUE(cfg) << cfg.error();
        daemon = std::make_unique<Daemon>(std::move(cfg).value());
        daemon->start();
        port = daemon->ports().at(0);
    }

    static std::string sign(const std::string& body, const std::string& key = "test-key-one") {
        return to_hex(hmac_sha256(key, body));
    }

    std::vector<Json> archived() {
        EXPECT_TRUE(daemon->wait_deliveries_idle(std::chrono::seconds(10)));
        std::vector<Json> out;
        for (const auto& line : test::read_lines(dir / "events.jsonl"))
            out.push_back(Json::parse(line));
        return out;
    }

    // With a limit of two connections: two are served, the third is answered 503 and logged
    // with `why`, and once one of the two closes a new one is served again.
    void expect_third_refused_until_one_closes(const std::string& limits, const std::string& why) {
        start(limits);
        auto a = std::make_unique<RawClient>(port);
        RawClient b(port);
        // A request answered on each proves both are registered before the third arrives.
        for (auto* c : {a.get(), &b}) {
            c->send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            ASSERT_EQ(c->read_response().status, 200);
        }
        RawClient third(port);
        third.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        const auto r = third.read_response();
        EXPECT_EQ(r.status, 503);
        EXPECT_EQ(r.body, R"({"error":"too many connections"})");
        EXPECT_TRUE(
            logged([&](Json& j) { return j["msg"] == "connection refused" && j["error"] == why; }));
        a.reset();
        ASSERT_TRUE(logged([](Json& j) { return j["msg"] == "connection closed"; }));
        RawClient fourth(port);
        fourth.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        EXPECT_EQ(fourth.read_response().status, 200);
    }

    test::HttpResponse exchange(const std::string& request) {
        RawClient c(port);
        c.send(request);
        return c.read_response();
    }

    bool logged(const std::function<bool(Json&)>& pred) { return logs->wait_for_record(pred); }

    // `a` and `b` each send 900 bytes of `body` (1000 bytes): the one the daemon reads second
    // would pass `limit`. Returns that one, once its 503 is logged with "limits.LIMIT reached".
    RawClient* second_body_refused(RawClient& a, RawClient& b, const std::string& body,
                                   const std::string& limit) {
        a.send(head_of(body, sign(body)) + body.substr(0, 900));
        b.send(head_of(body, sign(body)) + body.substr(0, 900));
        std::string refused_from;
        const bool refused = logged([&](Json& j) {
            if (j["msg"] != "request" || j["status"] != 503) return false;
            EXPECT_EQ(j["error"], "limits." + limit + " reached");
            refused_from = j["remote"];
            return true;
        });
        if (!refused) return nullptr;
        for (auto* c : {&a, &b}) {
            if (refused_from == "127.0.0.1:" + std::to_string(c->local_port())) return c;
        }
        ADD_FAILURE() << "refused from " << refused_from;
        return nullptr;
    }

    test::TempDir dir;
    std::shared_ptr<test::MemorySink> logs;
    std::unique_ptr<Daemon> daemon;
    std::uint16_t port = 0;
};

TEST_F(ServerTest, EverySampleIsAcceptedAndArchivedExactly) {
    start();
    std::map<std::string, std::string> ids;  // event id -> type
    RawClient c(port);
    for (const auto& type : test::sample_types()) {
        const auto body = test::sample(type);
        c.send(test::post("/sigsci/test", body, sign(body)));
        const auto r = c.read_response();
        ASSERT_EQ(r.status, 200) << type << ": " << r.body;
        auto answer = Json::parse(r.body);
        EXPECT_EQ(answer["status"], "accepted");
        ids[answer["id"].get<std::string>()] = type;
    }
    const auto records = archived();
    ASSERT_EQ(records.size(), test::sample_types().size());
    for (auto record : records) {
        const auto type = ids.at(record["id"].get<std::string>());
        auto original = Json::parse(test::sample(type));
        EXPECT_EQ(record["type"], type);
        EXPECT_EQ(record["endpoint"], "/sigsci/test");
        for (const auto& [key, value] : original.items())
            EXPECT_EQ(record[key], value) << type << "." << key;
    }
}

TEST_F(ServerTest, RequestLogLineCarriesTheContractFields) {
    start();
    const auto body = test::sample("flag");
    const auto r = exchange(test::post("/sigsci/test", body, sign(body)));
    ASSERT_EQ(r.status, 200);
    const auto id = Json::parse(r.body)["id"];
    EXPECT_TRUE(logged([&](Json& j) {
        return j["msg"] == "request" && j["event_id"] == id && j["status"] == 200 &&
               j["endpoint"] == "/sigsci/test" && j["type"] == "flag" && j.contains("remote") &&
               j.contains("duration_ms") && j.contains("ts") && j["level"] == "info";
    }));
    EXPECT_TRUE(logged([&](Json& j) {
        return j["msg"] == "delivery" && j["event_id"] == id && j["handler"] == "archive" &&
               j["status"] == "delivered";
    }));
    EXPECT_TRUE(logged([&](Json& j) {
        return j["msg"] == "event" && j["event_id"] == id && j["handler"] == "audit";
    }));
}

TEST_F(ServerTest, UnknownPathIs404) {
    start();
    const auto r = exchange(test::post("/other", "{}", sign("{}")));
    EXPECT_EQ(r.status, 404);
    EXPECT_EQ(r.body, R"({"error":"not found"})");
    EXPECT_EQ(r.header("content-type"), "application/json");
}

TEST_F(ServerTest, GetOnEndpointIs405WithAllowPost) {
    start();
    const auto r = exchange("GET /sigsci/test HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(r.status, 405);
    EXPECT_EQ(r.header("allow"), "POST");
    EXPECT_EQ(r.body, R"({"error":"method not allowed"})");
}

TEST_F(ServerTest, HealthzIs200WhenReady) {
    start();
    const auto r = exchange("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, R"({"status":"ok","backlog":0,"dead":0})");
}

// The declared size alone is enough: the body is never sent, so a server that waited for it
// would answer 408 instead.
TEST_F(ServerTest, DeclaredOversizeBodyIs413WithoutReadingIt) {
    start(R"("max_body_bytes": 1000, "request_timeout_ms": 60000)");
    RawClient c(port);
    c.send("POST /sigsci/test HTTP/1.1\r\nHost: x\r\nX-SigSci-Signature: " + std::string(64, 'a') +
           "\r\nContent-Length: 1001\r\n\r\n");
    const auto r = c.read_response();
    EXPECT_EQ(r.status, 413);
    EXPECT_EQ(r.body, R"({"error":"body too large"})");
    EXPECT_EQ(r.header("connection"), "close");
}

TEST_F(ServerTest, BodyExactlyAtTheLimitIsAccepted) {
    start(R"("max_body_bytes": 1000)");
    std::string body = R"({"type":"flag","payload":")";
    body += std::string(1000 - body.size() - 3, 'x') + "\"}";
    ASSERT_EQ(body.size(), 999u);
    body.insert(body.size() - 2, "y");
    ASSERT_EQ(body.size(), 1000u);
    EXPECT_EQ(exchange(test::post("/sigsci/test", body, sign(body))).status, 200);
}

TEST_F(ServerTest, ChunkedBodyOverTheLimitIs413) {
    start(R"("max_body_bytes": 1000)");
    RawClient c(port);
    const std::string chunk(600, 'x');
    std::string req =
        "POST /sigsci/test HTTP/1.1\r\nHost: x\r\nX-SigSci-Signature: " + std::string(64, 'a') +
        "\r\nTransfer-Encoding: chunked\r\n\r\n";
    req += "258\r\n" + chunk + "\r\n258\r\n" + chunk + "\r\n0\r\n\r\n";
    c.send(req);
    const auto r = c.read_response();
    EXPECT_EQ(r.status, 413);
    EXPECT_EQ(r.header("connection"), "close");
}

TEST_F(ServerTest, ChunkedBodyIsAcceptedAndSignatureCoversTheDecodedBytes) {
    start();
    const auto body = test::sample("agentAlert");
    std::string req = "POST /sigsci/test HTTP/1.1\r\nHost: x\r\nX-SigSci-Signature: " + sign(body) +
                      "\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (std::size_t i = 0; i < body.size(); i += 100) {
        const auto part = body.substr(i, 100);
        char size[16];
        std::snprintf(size, sizeof size, "%zx", part.size());
        req += std::string(size) + "\r\n" + part + "\r\n";
    }
    req += "0\r\n\r\n";
    const auto r = exchange(req);
    ASSERT_EQ(r.status, 200) << r.body;
    const auto records = archived();
    ASSERT_EQ(records.size(), 1u);
    EXPECT_EQ(records[0]["type"], "agentAlert");
}

TEST_F(ServerTest, MissingMalformedAndWrongSignaturesAre401AndLookAlike) {
    start();
    const auto body = test::sample("flag");
    const std::vector<std::optional<std::string>> bad = {
        std::nullopt,     "",
        "not-hex",        sign(body).substr(0, 63),
        sign(body) + "0", sign(body, "wrong-key"),
        sign(body + " "),
    };
    for (const auto& s : bad) {
        const auto r = exchange(test::post("/sigsci/test", body, s));
        EXPECT_EQ(r.status, 401) << (s ? *s : "(none)");
        EXPECT_EQ(r.body, R"({"error":"unauthorized"})");
    }
    EXPECT_TRUE(archived().empty());
    EXPECT_TRUE(
        logged([](Json& j) { return j["status"] == 401 && j["error"] == "signature mismatch"; }));
}

TEST_F(ServerTest, UppercaseHexSignatureIsAccepted) {
    start();
    const auto body = test::sample("flag");
    auto s = sign(body);
    for (auto& ch : s) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    EXPECT_EQ(exchange(test::post("/sigsci/test", body, s)).status, 200);
}

TEST_F(ServerTest, EitherRotationKeyVerifies) {
    start();
    const auto body = test::sample("listCreated");
    EXPECT_EQ(exchange(test::post("/sigsci/test", body, sign(body, "test-key-one"))).status, 200);
    EXPECT_EQ(exchange(test::post("/sigsci/test", body, sign(body, "test-key-two"))).status, 200);
}

TEST_F(ServerTest, SignedInvalidEnvelopesAre400) {
    start();
    for (const std::string body : {"[1,2,3]", "{\"payload\":{}}", "{\"type\":42}", "{not json"}) {
        const auto r = exchange(test::post("/sigsci/test", body, sign(body)));
        EXPECT_EQ(r.status, 400) << body;
        EXPECT_NO_THROW(static_cast<void>(Json::parse(r.body).at("error")));
    }
    EXPECT_TRUE(archived().empty());
}

TEST_F(ServerTest, UnsignedGarbageIs401NotParsed) {
    start();
    EXPECT_EQ(exchange(test::post("/sigsci/test", "{not json", std::string(64, 'f'))).status, 401);
}

TEST_F(ServerTest, Expect100ContinueGetsInterimAnswerThenTheBody) {
    start();
    const auto body = test::sample("flag");
    RawClient c(port);
    c.send("POST /sigsci/test HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nX-SigSci-Signature: " +
           sign(body) + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n");
    const auto interim = c.read_response();
    EXPECT_EQ(interim.status, 100);
    c.send(body);
    const auto r = c.read_response();
    EXPECT_EQ(r.status, 200) << r.body;
}

// A client with no signature is not asked for its body: 401 instead of 100 Continue, and closed.
TEST_F(ServerTest, Expect100ContinueWithoutASignatureGets401Instead) {
    start();
    RawClient c(port);
    c.send(
        "POST /sigsci/test HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: "
        "10\r\n\r\n");
    const auto r = c.read_response();
    EXPECT_EQ(r.status, 401);
    EXPECT_EQ(r.body, R"({"error":"unauthorized"})");
    EXPECT_EQ(r.header("connection"), "close");
    EXPECT_TRUE(logged([](Json& j) {
        return j["msg"] == "request" && j["status"] == 401 && j["error"] == "signature missing";
    }));
}

TEST_F(ServerTest, Expect100ContinueOnUnknownPathGetsTheFinalAnswerInstead) {
    start();
    RawClient c(port);
    c.send("POST /nope HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n");
    const auto r = c.read_response();
    EXPECT_EQ(r.status, 404);
}

// What clients without a key can make the daemon hold is bounded across connections: the bodies
// being read and not yet verified count against max_unverified_body_bytes as their bytes
// arrive; the one that would pass it is answered 503 and not read further, and what a body held
// is given back once it is verified or refused.
TEST_F(ServerTest, BodiesBeyondTheUnverifiedBudgetGet503AndWhatTheyHeldIsGivenBack) {
    start(R"("max_body_bytes": 1000, "max_unverified_body_bytes": 1000)");
    const auto body = body_of_size(1000);
    ASSERT_EQ(body.size(), 1000u);
    // 900 of 1000 bytes each: whichever body the daemon reads second does not fit.
    RawClient a(port);
    RawClient b(port);
    auto* refused_one = second_body_refused(a, b, body, "max_unverified_body_bytes");
    ASSERT_TRUE(refused_one);
    RawClient& refused = *refused_one;
    RawClient& admitted = refused_one == &a ? b : a;
    const auto r = refused.read_response();
    EXPECT_EQ(r.status, 503);
    EXPECT_EQ(r.body, R"({"error":"overloaded"})");
    EXPECT_EQ(r.header("connection"), "close");
    admitted.send(body.substr(900));
    EXPECT_EQ(admitted.read_response().status, 200);

    // Both gave back what they held, and a refused signature gives it back too: each of these
    // needs the whole budget.
    const auto other = body_of_size(999) + " ";
    EXPECT_EQ(exchange(test::post("/sigsci/test", other, std::string(64, 'a'))).status, 401);
    EXPECT_EQ(exchange(test::post("/sigsci/test", other, sign(other))).status, 200);

    // A declared length holds nothing until its bytes come: with one waiting for its body (the
    // 100 Continue says its head was read), a whole body still fits.
    RawClient waiting(port);
    waiting.send(head_of(body, sign(body), "Expect: 100-continue\r\n"));
    ASSERT_EQ(waiting.read_response().status, 100);
    const auto third = body_of_size(998) + "  ";
    EXPECT_EQ(exchange(test::post("/sigsci/test", third, sign(third))).status, 200);
}

// One client (an IPv4 address, an IPv6 /64) holds at most its share of that budget: its body
// that would pass the share is refused while the budget has room, and another client's body is
// still read.
TEST_F(ServerTest, OneClientHoldsAtMostItsShareOfTheUnverifiedBudget) {
    start(R"("max_body_bytes": 1000, "max_unverified_body_bytes": 4000, )"
          R"("max_unverified_body_bytes_per_ip": 1000)",
          R"(["127.0.0.1:0", "[::1]:0"])");
    const auto body = body_of_size(1000);
    RawClient a(port);
    RawClient b(port);
    auto* refused = second_body_refused(a, b, body, "max_unverified_body_bytes_per_ip");
    ASSERT_TRUE(refused);
    RawClient& admitted = refused == &a ? b : a;
    EXPECT_EQ(refused->read_response().status, 503);

    // Another client, over IPv6, has a share of its own while 127.0.0.1 holds 900 bytes.
    std::unique_ptr<RawClient> v6;
    try {
        v6 = std::make_unique<RawClient>(daemon->ports().at(1), true);
    } catch (const std::exception& e) {
        GTEST_SKIP() << "no IPv6 loopback here: " << e.what();
    }
    v6->send(head_of(body, sign(body)) + body.substr(0, 900));
    admitted.send(body.substr(900));
    EXPECT_EQ(admitted.read_response().status, 200);
    v6->send(body.substr(900));
    EXPECT_EQ(v6->read_response().status, 200);
    // What 127.0.0.1 held came back: a whole body fits its share again.
    const auto other = body_of_size(999) + " ";
    EXPECT_EQ(exchange(test::post("/sigsci/test", other, sign(other))).status, 200);
}

TEST_F(ServerTest, KeepAliveServesManyRequestsOnOneConnection) {
    start();
    RawClient c(port);
    for (int i = 0; i < 5; ++i) {
        const auto body = test::numbered(test::sample("flag"), i);
        c.send(test::post("/sigsci/test", body, sign(body)));
        const auto r = c.read_response();
        EXPECT_EQ(r.status, 200);
        EXPECT_NE(r.header("connection"), "close");
        c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        EXPECT_EQ(c.read_response().status, 200);
    }
    EXPECT_EQ(archived().size(), 5u);
}

TEST_F(ServerTest, PipelinedRequestsAreAnsweredInOrder) {
    start();
    const auto a = test::sample("flag");
    const auto b = test::sample("expireFlag");
    RawClient c(port);
    c.send(test::post("/sigsci/test", a, sign(a)) + "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" +
           test::post("/sigsci/test", b, sign(b)));
    EXPECT_EQ(c.read_response().status, 200);
    EXPECT_EQ(c.read_response().status, 404);
    EXPECT_EQ(c.read_response().status, 200);
}

// The server parses what has arrived and reads on from where the parser stopped: a request in
// pieces (the head cut mid-line, the body cut in two) is the same request, and the next one on
// the connection, arriving whole, is served as well.
TEST_F(ServerTest, RequestArrivingInPiecesIsServedWhole) {
    start();
    const auto body = test::sample("flag");
    const auto request = test::post("/sigsci/test", body, sign(body));
    const auto head_end = request.find("\r\n\r\n") + 4;
    RawClient c(port);
    c.send(request.substr(0, head_end / 2));
    c.send(request.substr(head_end / 2, head_end - head_end / 2));
    c.send(request.substr(head_end, body.size() / 2));
    c.send(request.substr(head_end + body.size() / 2));
    EXPECT_EQ(c.read_response().status, 200);
    const auto next = test::numbered(body, 1);
    c.send(test::post("/sigsci/test", next, sign(next)));
    EXPECT_EQ(c.read_response().status, 200);
    const auto lines = archived();
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(lines[0]["payload"], Json::parse(body)["payload"]);
}

TEST_F(ServerTest, ConnectionCloseIsHonoured) {
    start();
    RawClient c(port);
    c.send("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(c.read_response().header("connection"), "close");
    EXPECT_TRUE(c.peer_closed());
}

TEST_F(ServerTest, ClientTooSlowWithHeadersGets408) {
    start(R"("request_timeout_ms": 200)");
    RawClient c(port);
    c.send("POST /sigsci/test HTTP/1.1\r\nHost: x\r\n");  // and then nothing
    const auto r = c.read_response();
    EXPECT_EQ(r.status, 408);
    EXPECT_EQ(r.body, R"({"error":"request timeout"})");
    EXPECT_TRUE(c.peer_closed());
}

TEST_F(ServerTest, ClientTooSlowWithBodyGets408AndNothingIsKept) {
    start(R"("request_timeout_ms": 200)");
    const auto body = test::sample("flag");
    RawClient c(port);
    c.send(test::post("/sigsci/test", body, sign(body)).substr(0, 200 + body.size() / 2));
    const auto r = c.read_response();
    EXPECT_EQ(r.status, 408);
    EXPECT_TRUE(archived().empty());
}

TEST_F(ServerTest, IdleConnectionIsClosedSilently) {
    start(R"("idle_timeout_ms": 100)");
    RawClient c(port);
    c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(c.read_response().status, 200);
    EXPECT_TRUE(c.peer_closed());  // no 408 for a client that was merely idle
}

TEST_F(ServerTest, OversizedHeadersGet431) {
    start(R"("max_header_bytes": 2048)");
    const auto r = exchange(
        "POST /sigsci/test HTTP/1.1\r\nHost: x\r\nX-Junk: " + std::string(4096, 'j') + "\r\n\r\n");
    EXPECT_EQ(r.status, 431);
}

TEST_F(ServerTest, MalformedRequestIs400) {
    start();
    EXPECT_EQ(exchange("HELLO\r\n\r\n").status, 400);
    EXPECT_EQ(exchange("POST /sigsci/test HTTP/1.1\r\nContent-Length: abc\r\n\r\n").status, 400);
}

// Request smuggling: framing that two parsers could read differently is refused outright.
TEST_F(ServerTest, AmbiguousFramingIsRefused) {
    start();
    // Content-Length together with chunked.
    EXPECT_EQ(exchange("POST /sigsci/test HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                  .status,
              400);
    // Two different lengths.
    EXPECT_EQ(exchange("POST /sigsci/test HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                       "Content-Length: 6\r\n\r\nhello!")
                  .status,
              400);
    // A coding other than chunked: the bytes would not be the ones that were signed.
    RawClient c(port);
    c.send(
        "POST /sigsci/test HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, "
        "gzip\r\n\r\n0\r\n\r\n");
    const auto r = c.read_response();
    EXPECT_EQ(r.status, 501);
    EXPECT_EQ(r.header("connection"), "close");
}

TEST_F(ServerTest, ConnectionsBeyondMaxAreRefusedWith503) {
    expect_third_refused_until_one_closes(R"("max_connections": 2)", "max_connections reached");
}

TEST_F(ServerTest, ClientVanishingMidBodyLeavesNothingAndServerServesOn) {
    start();
    const auto body = test::sample("flag");
    {
        RawClient c(port);
        c.send(test::post("/sigsci/test", body, sign(body)).substr(0, 250));
    }  // closed mid-body
    const auto r = exchange(test::post("/sigsci/test", body, sign(body)));
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(archived().size(), 1u);
}

TEST_F(ServerTest, UnroutedEventIsAcceptedAndLoggedAsUnrouted) {
    start();
    const std::string body = R"({"type":"somethingNew","payload":{}})";
    const auto r = exchange(test::post("/sigsci/unrouted", body, sign(body)));
    ASSERT_EQ(r.status, 200);
    const auto id = Json::parse(r.body)["id"];
    EXPECT_TRUE(logged([&](Json& j) {
        return j["msg"] == "unrouted" && j["event_id"] == id && j["type"] == "somethingNew";
    }));
    EXPECT_TRUE(archived().empty());
}

TEST_F(ServerTest, HostileTypeCannotForgeLogLines) {
    start();
    const std::string body = R"({"type":"flag\"}\n{\"level\":\"error\",\"msg\":\"forged\"}"})";
    ASSERT_EQ(exchange(test::post("/sigsci/test", body, sign(body))).status, 200);
    ASSERT_TRUE(daemon->wait_deliveries_idle(std::chrono::seconds(10)));
    const std::string expected_type = "flag\"}\n{\"level\":\"error\",\"msg\":\"forged\"}";
    int seen = 0;
    for (const auto& line : logs->lines()) {
        ASSERT_EQ(line.find('\n'), std::string::npos);
        auto j = Json::parse(line);
        EXPECT_NE(j["msg"], "forged");
        if (j.contains("type") && j["type"] == expected_type) ++seen;
    }
    EXPECT_GE(seen, 2);  // the request line and the deliveries carry it, escaped
}

TEST_F(ServerTest, ReloadSwapsKeysAndBadReloadKeepsTheOldConfig) {
    start("", R"(["127.0.0.1:0"])", R"([{"file": "key-one"}])");
    const auto body = test::sample("flag");
    EXPECT_EQ(exchange(test::post("/sigsci/test", body, sign(body, "test-key-one"))).status, 200);
    EXPECT_EQ(exchange(test::post("/sigsci/test", body, sign(body, "test-key-two"))).status, 401);

    // Rotate: the config now trusts key two only.
    test::write_file(dir / "config.json",
                     config_text("", R"(["127.0.0.1:0"])", R"([{"file": "key-two"}])"));
    ASSERT_TRUE(daemon->reload());
    EXPECT_EQ(exchange(test::post("/sigsci/test", body, sign(body, "test-key-two"))).status, 200);
    EXPECT_EQ(exchange(test::post("/sigsci/test", body, sign(body, "test-key-one"))).status, 401);

    // A broken file is refused and the running config stays.
    test::write_file(
        dir / "config.json",
        R"({"listen": ["127.0.0.1:0"], "endpoints": [{"path": "/x", "signing_keys": [{"value": ""}]}]})");
    EXPECT_FALSE(daemon->reload());
    EXPECT_TRUE(logged([](Json& j) {
        return j["msg"] == "reload failed" &&
               j["error"].get<std::string>().find(
                   "endpoints[0].signing_keys[0].value: key is empty") != std::string::npos;
    }));
    EXPECT_EQ(exchange(test::post("/sigsci/test", body, sign(body, "test-key-two"))).status, 200);
}

TEST_F(ServerTest, ReloadReopensTheArchiveFile) {
    start();
    const auto body = test::sample("flag");
    ASSERT_EQ(exchange(test::post("/sigsci/test", body, sign(body))).status, 200);
    ASSERT_EQ(archived().size(), 1u);
    std::filesystem::rename(dir / "events.jsonl", dir / "events.jsonl.1");
    ASSERT_TRUE(daemon->reload());
    const auto second = test::numbered(body, 2);
    ASSERT_EQ(exchange(test::post("/sigsci/test", second, sign(second))).status, 200);
    EXPECT_EQ(archived().size(), 1u);
    EXPECT_EQ(test::read_lines(dir / "events.jsonl.1").size(), 1u);
}

// A reload that finishes after shutdown began (one that was stuck on a hung file) is not
// applied: the handlers shutdown told to end stay the last ones.
TEST_F(ServerTest, ReloadAfterShutdownBeganIsDropped) {
    start();
    daemon->shutdown();
    EXPECT_FALSE(daemon->reload());
    EXPECT_TRUE(
        logged([](Json& j) { return j["msg"] == "reload dropped: the daemon is stopping"; }));
    for (const auto& line : logs->lines()) EXPECT_NE(Json::parse(line)["msg"], "reloaded");
}

TEST_F(ServerTest, ServesIpv6AndIpv4ListenersTogether) {
    start("", R"(["127.0.0.1:0", "[::1]:0"])");
    const auto ports = daemon->ports();
    ASSERT_EQ(ports.size(), 2u);
    std::unique_ptr<RawClient> v6;
    try {
        v6 = std::make_unique<RawClient>(ports[1], true);
    } catch (const std::exception& e) {
        GTEST_SKIP() << "no IPv6 loopback here: " << e.what();
    }
    const auto body = test::sample("flag");
    v6->send(test::post("/sigsci/test", body, sign(body)));
    EXPECT_EQ(v6->read_response().status, 200);
    EXPECT_EQ(exchange(test::post("/sigsci/test", body, sign(body))).status, 200);
}

TEST_F(ServerTest, BindFailureNamesTheAddress) {
    start();
    const std::string busy = "127.0.0.1:" + std::to_string(port);
    // A spool of its own: the first daemon holds its spool's lock.
    auto cfg = parse_config(config_text("", "[\"" + busy + "\"]", R"([{"file": "key-one"}])",
                                        R"({"path": "second.db"})"),
                            "t.json", dir.path());
    ASSERT_TRUE(cfg) << cfg.error();
    Daemon second(std::move(cfg).value());
    try {
        second.start();
        FAIL() << "bound a port that is in use";
    } catch (const std::runtime_error& e) {
        EXPECT_EQ(std::string(e.what()).find("listen " + busy + ": bind: "), 0u) << e.what();
    }
}

TEST_F(ServerTest, ShutdownFinishesTheRequestInFlightAndItsDelivery) {
    start(R"("drain_timeout_ms": 30000)");
    const auto body = test::sample("flag");
    const auto request = test::post("/sigsci/test", body, sign(body));
    RawClient c(port);
    c.send(request.substr(0, request.size() - 10));  // in flight: the body is not complete yet
    // A second, idle keep-alive connection must not hold the drain up for 30 s.
    RawClient idle(port);
    idle.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    ASSERT_EQ(idle.read_response().status, 200);
    std::thread stopper([&] { daemon->shutdown(); });
    EXPECT_TRUE(idle.peer_closed());
    c.send(request.substr(request.size() - 10));
    const auto r = c.read_response();
    EXPECT_EQ(r.status, 200);
    stopper.join();
    const auto lines = test::read_lines(dir / "events.jsonl");
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(Json::parse(lines[0])["id"], Json::parse(r.body)["id"]);
    EXPECT_THROW(RawClient{port}, std::runtime_error);  // no longer listening
}

TEST_F(ServerTest, ConcurrentClientsAllGetTheirEventsArchived) {
    start();
    constexpr int clients = 8;
    constexpr int per_client = 50;
    std::vector<std::thread> threads;
    std::atomic<int> ok{0};
    for (int t = 0; t < clients; ++t) {
        threads.emplace_back([&, t] {
            RawClient c(port);
            const auto types = test::sample_types();
            for (int i = 0; i < per_client; ++i) {
                const auto body = test::numbered(
                    test::sample(
                        types[static_cast<std::size_t>(t * per_client + i) % types.size()]),
                    t * per_client + i);
                c.send(test::post("/sigsci/test", body, sign(body)));
                if (c.read_response().status == 200) ++ok;
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(ok, clients * per_client);
    EXPECT_EQ(archived().size(), static_cast<std::size_t>(clients * per_client));
}

TEST_F(ServerTest, RepeatedBodyIsAnsweredDuplicateWithTheOriginalIdAndArchivedOnce) {
    start();
    const auto body = test::sample("flag");
    const auto first = exchange(test::post("/sigsci/test", body, sign(body)));
    ASSERT_EQ(first.status, 200);
    const auto second = exchange(test::post("/sigsci/test", body, sign(body)));
    ASSERT_EQ(second.status, 200);
    auto a = Json::parse(first.body);
    auto b = Json::parse(second.body);
    EXPECT_EQ(b["status"], "duplicate");
    EXPECT_EQ(b["id"], a["id"]);
    EXPECT_EQ(archived().size(), 1u);
    EXPECT_TRUE(logged([&](Json& j) {
        return j["msg"] == "request" && j["duplicate"] == true && j["event_id"] == a["id"];
    }));
}

TEST_F(ServerTest, FullSpoolAnswers503AndKeepsWhatItAccepted) {
    start("", R"(["127.0.0.1:0"])", R"([{"file": "key-one"}])",
          R"({"path": "spool.db", "max_bytes": 131072})");
    const std::string big =
        R"({"type":"listUpdated","payload":{"entries":")" + std::string(30000, 'x') + R"("}})";
    std::vector<std::string> accepted;
    test::HttpResponse refused;
    for (int i = 0; i < 40; ++i) {
        const auto body = test::numbered(big, i);
        const auto r = exchange(test::post("/sigsci/test", body, sign(body)));
        if (r.status != 200) {
            refused = r;
            break;
        }
        accepted.push_back(Json::parse(r.body)["id"]);
    }
    ASSERT_EQ(refused.status, 503);
    EXPECT_EQ(refused.body, R"({"error":"cannot store event"})");
    EXPECT_FALSE(accepted.empty());
    EXPECT_TRUE(
        logged([](Json& j) { return j["msg"] == "spool write failed" && j["level"] == "error"; }));
    // Small events and health checks are still served while it is full.
    EXPECT_EQ(exchange("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
    const auto records = archived();
    ASSERT_EQ(records.size(), accepted.size());
    for (std::size_t i = 0; i < accepted.size(); ++i) EXPECT_EQ(records[i]["id"], accepted[i]);
}

TEST_F(ServerTest, EventsAcceptedBeforeARestartAreDeliveredAfterIt) {
    // First the archive cannot be written (/dev/full fails every write, like a full disk).
    auto config_with = [&](const std::string& archive) {
        return R"({"listen": ["127.0.0.1:0"], "threads": 2,
          "endpoints": [{"path": "/sigsci/test", "signing_keys": [{"file": "key-one"}],
                         "routes": [{"types": ["*"], "handlers": ["archive"]}]}],
          "handlers": {"archive": {"kind": "file", "path": ")" +
               archive + R"("}},
          "spool": {"path": "spool.db", "retry": {"initial_delay_ms": 60000, "max_attempts": 5}}})";
    };
    start_with(config_with("/dev/full"));
    const auto body = test::sample("flag");
    const auto r = exchange(test::post("/sigsci/test", body, sign(body)));
    ASSERT_EQ(r.status, 200);
    const auto id = Json::parse(r.body)["id"];
    ASSERT_TRUE(logged([&](Json& j) {
        return j["msg"] == "delivery" && j["status"] == "failed" && j["event_id"] == id;
    }));
    daemon->shutdown();  // the retry is a minute away: the delivery is still pending
    daemon.reset();

    start_with(config_with((dir / "events.jsonl").string()));
    // Resumed at start, at once, although its backoff had a minute to run.
    const auto records = archived();
    ASSERT_EQ(records.size(), 1u);
    EXPECT_EQ(records[0]["id"], id);
    EXPECT_TRUE(logged([&](Json& j) {
        return j["msg"] == "delivery" && j["status"] == "delivered" && j["event_id"] == id &&
               j["attempt"] == 2;
    }));
}

}  // namespace
}  // namespace sigsci

// ---- abuse limits ----------------------------------------------------------------------------
namespace sigsci {
namespace {

TEST_F(ServerTest, ConnectionsBeyondThePerAddressCapAreRefused) {
    expect_third_refused_until_one_closes(R"("max_connections_per_ip": 2)",
                                          "max_connections_per_ip reached");
}

// Loopback has one address per family, so the grouping itself is checked on the function the
// cap counts by.
TEST(ConnectionLimitKey, CountsIpv4ByAddressAndIpv6ByItsSlash64) {
    EXPECT_EQ(connection_limit_key("192.0.2.7"), "192.0.2.7");
    EXPECT_NE(connection_limit_key("192.0.2.7"), connection_limit_key("192.0.2.8"));
    // An IPv4 client on a dual-stack socket is still counted by its IPv4 address, not lumped
    // with every other IPv4 client into ::ffff:0:0/64.
    EXPECT_EQ(connection_limit_key("::ffff:192.0.2.7"), "192.0.2.7");
    EXPECT_NE(connection_limit_key("::ffff:192.0.2.7"), connection_limit_key("::ffff:192.0.2.8"));
    // One subscriber's /64: any interface id counts against the same cap.
    EXPECT_EQ(connection_limit_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::/64");
    EXPECT_EQ(connection_limit_key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
    EXPECT_NE(connection_limit_key("2001:db8:1:3::1"), connection_limit_key("2001:db8:1:2::1"));
    EXPECT_EQ(connection_limit_key("::1"), "::/64");
    EXPECT_EQ(connection_limit_key("not an address"), "");
}

TEST_F(ServerTest, TooManyHeaderFieldsGet431) {
    start(R"("max_header_count": 10)");
    std::string many;
    for (int i = 0; i < 20; ++i) many += "X-F" + std::to_string(i) + ": v\r\n";
    const auto body = test::sample("flag");
    RawClient c(port);
    c.send(test::post("/sigsci/test", body, sign(body), many));
    const auto r = c.read_response();
    EXPECT_EQ(r.status, 431);
    EXPECT_EQ(r.body, R"({"error":"too many header fields"})");
    EXPECT_TRUE(c.peer_closed());
    EXPECT_TRUE(archived().empty());
    // Within the count, the same request is served.
    RawClient ok(port);
    ok.send(test::post("/sigsci/test", body, sign(body), "X-A: 1\r\n"));
    EXPECT_EQ(ok.read_response().status, 200);
}

// Slowloris: bytes keep coming, one at a time, but the deadline is for the whole request.
TEST_F(ServerTest, TricklingClientIsCutOffAtTheRequestTimeout) {
    start(R"("request_timeout_ms": 300)");
    RawClient c(port);
    c.send("POST /sigsci/test HTTP/1.1\r\nHost: x\r\nX-Pad: ");
    std::atomic<bool> answered{false};
    std::atomic<int> trickled{0};
    std::thread trickler([&] {
        // Pacing, not waiting: a byte every 20 ms for at most 10 s.
        for (int i = 0; i < 500 && !answered.load(); ++i) {
            try {
                c.send("a");
            } catch (const std::exception&) {
                break;  // the server closed the connection
            }
            ++trickled;
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    });
    const auto r = c.read_response();
    answered = true;
    trickler.join();
    EXPECT_EQ(r.status, 408);
    EXPECT_LT(trickled.load(), 500);  // cut off while still trickling
    EXPECT_TRUE(logged([](Json& j) { return j["msg"] == "request" && j["status"] == 408; }));
}

// Each request has its own deadline: a keep-alive client whose requests together last longer
// than request_timeout_ms is never cut off (the timer, armed once, waits again when it finds the
// deadline moved on).
TEST_F(ServerTest, AKeepAliveClientOutlastsTheRequestTimeoutAcrossRequests) {
    start(R"("request_timeout_ms": 200, "idle_timeout_ms": 1000)");
    RawClient c(port);
    for (int i = 0; i < 10; ++i) {
        c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        EXPECT_EQ(c.read_response().status, 200) << "request " << i;
        // Pacing, not waiting: ten requests 60 ms apart span three request timeouts.
        std::this_thread::sleep_for(std::chrono::milliseconds(60));
    }
    c.send("POST /sigsci/test HTTP/1.1\r\nHost: x\r\n");  // and then nothing
    EXPECT_EQ(c.read_response().status, 408);             // the deadline still holds for a slow one
}

TEST_F(ServerTest, ClientErrorLinesAreRateLimited) {
    auto text = config_text("", R"(["127.0.0.1:0"])", R"([{"file": "key-one"}])");
    text.replace(text.find("\"threads\""), 0, R"("log": {"client_errors_per_second": 5}, )");
    start_with(text);

    const auto body = test::sample("flag");
    RawClient c(port);
    int sent = 0;
    // Forged requests until the summary of a finished second appears (bounded).
    auto summary = [&] {
        for (const auto& line : logs->lines()) {
            if (line.find("\"client errors not logged\"") != std::string::npos) return true;
        }
        return false;
    };
    while (!summary() && sent < 100000) {
        c.send(test::post("/sigsci/test", body, std::string(64, '0')));
        ASSERT_EQ(c.read_response().status, 401);
        ++sent;
    }
    ASSERT_TRUE(summary()) << "after " << sent << " forged requests";
    int logged_401 = 0;
    std::uint64_t suppressed = 0;
    for (const auto& line : logs->lines()) {
        auto j = Json::parse(line);
        if (j["msg"] == "request" && j["status"] == 401) ++logged_401;
        if (j["msg"] == "client errors not logged")
            suppressed += j["suppressed"].get<std::uint64_t>();
    }
    EXPECT_GT(suppressed, 0u);
    EXPECT_LT(logged_401, sent);
    // Everything is accounted for: logged, summarised, or in the current second's count.
    EXPECT_LE(static_cast<std::uint64_t>(logged_401) + suppressed,
              static_cast<std::uint64_t>(sent));
    // Successful requests are never suppressed.
    RawClient ok(port);
    ok.send(test::post("/sigsci/test", body, sign(body)));
    ASSERT_EQ(ok.read_response().status, 200);
    EXPECT_TRUE(logged([](Json& j) { return j["msg"] == "request" && j["status"] == 200; }));
}

// Many idle connections must not keep a real request out (loopback, bounded). The idle ends
// are held by a child process, so that neither process needs more than 10,000 descriptors.
TEST_F(ServerTest, TenThousandIdleConnectionsThenASignedRequestIsAnswered) {
    constexpr int idle = 10000;
    rlimit lim{};
    ::getrlimit(RLIMIT_NOFILE, &lim);
    if (lim.rlim_cur < idle + 200) {
        GTEST_SKIP() << "needs " << idle + 200 << " open files; RLIMIT_NOFILE is " << lim.rlim_cur;
    }
    start(R"("max_connections": 20000, "max_connections_per_ip": 0)");
    log::set_level(log::Level::info);  // not a debug line per connection
    int ready[2];
    int hold[2];
    ASSERT_EQ(::pipe(ready), 0);
    ASSERT_EQ(::pipe(hold), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        // Only system calls from here: the parent has threads, so no malloc after fork.
        ::close(ready[0]);
        ::close(hold[1]);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        char status = 'R';
        for (int i = 0; i < idle; ++i) {
            const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
                status = 'E';
                break;
            }
        }
        (void)!::write(ready[1], &status, 1);
        char b;
        (void)!::read(hold[0], &b, 1);  // until the parent closes its end
        ::_exit(0);
    }
    ::close(ready[1]);
    ::close(hold[0]);
    pollfd p{ready[0], POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 60000), 1) << "the child did not connect in 60 s";
    char status = 0;
    ASSERT_EQ(::read(ready[0], &status, 1), 1);
    ::close(ready[0]);
    EXPECT_EQ(status, 'R') << "the child could not open all its connections";

    const auto body = test::sample("flag");
    RawClient c(port);
    c.send(test::post("/sigsci/test", body, sign(body)));
    EXPECT_EQ(c.read_response().status, 200);
    // Accepted in order, so every idle connection before it is open on the server too.
    EXPECT_GE(daemon->connection_count(), static_cast<std::size_t>(idle));
    ::close(hold[1]);  // the child exits and its connections close
    int wstatus = 0;
    ::waitpid(child, &wstatus, 0);
    EXPECT_TRUE(WIFEXITED(wstatus));
}

}  // namespace
}  // namespace sigsci
