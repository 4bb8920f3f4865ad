// libFuzzer target: the whole request path fed raw HTTP bytes, as a connection would deliver
// them: Beast's parser with the configured limits, then route_head, check_body, submit and
// answer, for every request in the input (pipelining). No sockets: what is fuzzed is the
// parsing and the decisions.
//
// To reach past the signature check, a request whose X-SigSci-Signature is exactly "fuzz" is
// signed correctly by the harness before it is checked; any other value is checked as sent.
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include "fuzz_entry.hpp"

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "sigsci/config.hpp"
#include "sigsci/dispatcher.hpp"
#include "sigsci/log.hpp"
#include "sigsci/signature.hpp"
#include "sigsci/webhook_service.hpp"

namespace {

namespace http = boost::beast::http;

// Keeps nothing; answers "accepted" for every event.
class AcceptingSink final : public sigsci::EventSink {
  public:
    void submit(const sigsci::EventPtr& event, std::vector<sigsci::HandlerPtr>,
                sigsci::SubmitDone done) override {
        done({sigsci::SubmitResult::Status::accepted, event->id, {}});
    }
    bool wait_idle(std::chrono::milliseconds) override { return true; }
    void stop(std::chrono::milliseconds, const std::function<void()>&,
              std::chrono::milliseconds) override {}
    sigsci::SinkStats stats() const override { return {}; }
    void set_pending_limits(sigsci::PendingLimits) override {}
};

constexpr const char* config_text = R"({
  "listen": ["127.0.0.1:0"],
  "limits": {"max_body_bytes": 65536, "max_header_bytes": 8192},
  "endpoints": [
    {"path": "/hook", "signing_keys": [{"value": "fuzz-key"}],
     "routes": [{"types": ["flag"], "handlers": ["a"]}, {"types": ["*"], "handlers": ["b"]}]},
    {"path": "/windowed", "signing_keys": [{"value": "fuzz-key"}], "max_age_s": 300,
     "routes": [{"types": ["*"], "handlers": ["b"]}]}],
  "handlers": {"a": {"kind": "log"}, "b": {"kind": "log", "payload": "none"}}
})";

struct Harness {
    Harness()
        : service(sigsci::Runtime::build(sigsci::parse_config(config_text, "fuzz", ".").value())) {
        sigsci::log::set_level(sigsci::log::Level::off);
        service.attach(sink);
        service.set_ready(true);
    }
    AcceptingSink sink;
    sigsci::WebhookService service;
};

}  // namespace

SIGSCI_FUZZ_TARGET(request) {
    static Harness h;
    const auto runtime = h.service.snapshot();
    const auto& limits = runtime->config.limits;
    boost::beast::flat_buffer buffer;
    auto in = buffer.prepare(size);
    std::memcpy(in.data(), data, size);
    buffer.commit(size);
    for (int n = 0; n < 16 && buffer.size() > 0; ++n) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(limits.max_header_bytes);
        parser.body_limit(limits.max_body_bytes);
        parser.eager(true);
        boost::system::error_code ec;
        while (!parser.is_done()) {
            const auto used = parser.put(buffer.data(), ec);
            buffer.consume(used);
            if (ec == http::error::need_more) {
                ec = {};
                if (used == 0) break;  // the input ended mid-request
                continue;
            }
            if (ec || used == 0) break;
        }
        if (ec || !parser.is_header_done()) return 0;
        auto& req = parser.get();
        std::optional<std::uint64_t> length;
        if (parser.content_length()) length = *parser.content_length();
        // "fuzz" is replaced by the body's signature below: a well-formed one stands in for it.
        const std::string placeholder(64, '0');
        const std::string_view presented = req["X-SigSci-Signature"];
        const sigsci::RequestHead head{
            req.method_string(), req.target(), length, req[http::field::transfer_encoding],
            presented == "fuzz" ? std::string_view(placeholder) : presented};
        (void)h.service.route_admin(head);
        auto decision = h.service.route_head(*runtime, head);
        if (std::holds_alternative<sigsci::Response>(decision) || !parser.is_done()) {
            if (auto* r = std::get_if<sigsci::Response>(&decision)) h.service.count(*r);
            return 0;
        }
        const auto& endpoint = *std::get<const sigsci::EndpointConfig*>(decision);
        std::string signature(req["X-SigSci-Signature"]);
        if (signature == "fuzz") {
            signature =
                sigsci::to_hex(sigsci::hmac_sha256(endpoint.signing_keys.at(0), req.body()));
        }
        auto verdict = h.service.check_body(*runtime, endpoint, signature, std::move(req.body()));
        if (auto* accepted = std::get_if<sigsci::Accepted>(&verdict)) {
            const auto event = accepted->event;
            const bool unrouted = accepted->handlers.empty();
            sigsci::SubmitResult result;
            h.service.submit(std::move(*accepted),
                             [&](sigsci::SubmitResult r) { result = std::move(r); });
            (void)h.service.answer(*event, unrouted, result);
        }
        if (!req.keep_alive()) break;
    }
    return 0;
}
