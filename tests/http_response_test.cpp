// serialize_response() against Beast's own serializer, which wrote our answers before it: the
// same bytes for every kind of answer the daemon gives.
#include <gtest/gtest.h>

#include <boost/beast/http.hpp>
#include <sstream>
#include <string>

#include "sigsci/server.hpp"
#include "sigsci/webhook_service.hpp"

namespace sigsci {
namespace {

namespace http = boost::beast::http;

std::string beast_bytes(const Response& r, unsigned version, bool keep_alive) {
    http::response<http::string_body> res{static_cast<http::status>(r.status), version};
    res.set(http::field::server, "sigsci-webhookd");
    res.set(http::field::content_type,
            r.content_type.empty() ? std::string_view("application/json") : r.content_type);
    if (!r.allow.empty()) res.set(http::field::allow, r.allow);
    res.keep_alive(keep_alive);
    res.body() = r.body;
    res.prepare_payload();
    std::ostringstream os;
    os << res;
    return os.str();
}

TEST(SerializeResponse, WritesWhatBeastWroteForEveryKindOfAnswer) {
    Response accepted;
    accepted.body = R"({"status":"accepted","id":"0190a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b"})";
    auto not_allowed = error_response(405, "method not allowed");
    not_allowed.allow = "POST";
    Response metrics;
    metrics.body = "# TYPE x counter\nx 1\n";
    metrics.content_type = "text/plain; version=0.0.4";
    Response empty_body;
    empty_body.status = 204;
    const Response answers[] = {accepted,
                                error_response(401, "signature mismatch"),
                                not_allowed,
                                error_response(413, "body too large"),
                                error_response(503, "too many connections"),
                                metrics,
                                empty_body};
    std::string out = "left over from the previous answer, and longer than some of these";
    for (const auto& r : answers) {
        for (const unsigned version : {10u, 11u}) {
            for (const bool keep_alive : {true, false}) {
                serialize_response(r, version, keep_alive, out);
                EXPECT_EQ(out, beast_bytes(r, version, keep_alive))
                    << "status " << r.status << ", HTTP/" << version / 10 << "." << version % 10
                    << (keep_alive ? ", keep-alive" : ", close");
            }
        }
    }
}

}  // namespace
}  // namespace sigsci
