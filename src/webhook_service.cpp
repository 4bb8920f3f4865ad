#include "sigsci/webhook_service.hpp"

#include <cctype>
#include <chrono>
#include <cstring>

#include "sigsci/clock.hpp"
#include "sigsci/envelope.hpp"
#include "sigsci/event.hpp"
#include "sigsci/log.hpp"
#include "sigsci/metrics.hpp"
#include "sigsci/router.hpp"
#include "sigsci/signature.hpp"

namespace sigsci {

namespace {
bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(a[i])) !=
            std::tolower(static_cast<unsigned char>(b[i]))) {
            return false;
        }
    }
    return true;
}
}  // namespace

std::shared_ptr<const Runtime> Runtime::build(Config config) {
    auto rt = std::make_shared<Runtime>();
    for (const auto& spec : config.handlers) rt->handlers.emplace(spec.name, spec.make());
    rt->config = std::move(config);
    return rt;
}

std::vector<HandlerPtr> Runtime::handlers_for(const EndpointConfig& endpoint,
                                              std::string_view type) const {
    std::vector<HandlerPtr> out;
    for (const auto& name : route_handlers(endpoint, type)) {
        // Config validation guarantees every routed name exists.
        out.push_back(handlers.at(name));
    }
    return out;
}

Response error_response(int status, std::string_view message) {
    Response r;
    r.status = status;
    r.body = Json{{"error", message}}.dump(-1, ' ', false, Json::error_handler_t::replace);
    return r;
}

WebhookService::WebhookService(std::shared_ptr<const Runtime> runtime)
    : runtime_(std::move(runtime)) {}

std::optional<std::string> replay_problem(const ReplayWindow& window,
                                          const std::optional<std::string>& created,
                                          std::chrono::system_clock::time_point now) {
    const auto when = created ? parse_date_ms(*created) : std::optional<std::int64_t>{};
    if (!when) {
        if (window.accept_unparseable) return std::nullopt;
        return std::string("stale: created is missing or not an RFC 3339 date");
    }
    const auto now_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
    const auto age_s = (now_ms - *when) / 1000;
    if (now_ms - *when >
        std::chrono::duration_cast<std::chrono::milliseconds>(window.max_age).count())
        return "stale: created " + std::to_string(age_s) + " s ago (max_age_s " +
               std::to_string(window.max_age.count()) + ")";
    if (*when - now_ms >
        std::chrono::duration_cast<std::chrono::milliseconds>(window.max_future).count())
        return "stale: created " + std::to_string(-age_s) + " s in the future (max_future_s " +
               std::to_string(window.max_future.count()) + ")";
    return std::nullopt;
}

namespace {
Response get_only() {
    auto r = error_response(405, "method not allowed");
    r.allow = "GET";
    return r;
}
}  // namespace

Response WebhookService::healthz() const {
    if (!ready_.load()) return error_response(503, "not ready");
    const auto st = sink_ ? sink_->stats() : SinkStats{};
    Response r;
    r.body = Json{{"status", "ok"}, {"backlog", st.backlog}, {"dead", st.dead}}.dump();
    return r;
}

Response WebhookService::route_admin(const RequestHead& head) const {
    const auto path = head.target.substr(0, head.target.find('?'));
    if (path != "/metrics" && path != "/healthz") return error_response(404, "not found");
    if (head.method != "GET") return get_only();
    if (path == "/healthz") return healthz();
    Response r;
    r.body = metrics_ ? metrics_->render(sink_ ? sink_->stats() : SinkStats{}) : std::string();
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    return r;
}

void WebhookService::count(const Response& r) const {
    if (metrics_ == nullptr) return;
    metrics_->request(r.endpoint, r.status);
    if (r.endpoint.empty()) return;
    if (r.status == 401) {
        std::string_view reason = r.error;  // "signature mismatch" -> "mismatch"
        if (reason.starts_with("signature ")) reason.remove_prefix(10);
        reason = reason.substr(0, reason.find(':'));  // "stale: created ..." -> "stale"
        metrics_->signature_failure(r.endpoint, reason);
    } else if (r.status == 200 && !r.type.empty()) {
        if (r.duplicate) {
            metrics_->duplicate(r.endpoint);
        } else {
            metrics_->event(r.endpoint, r.type);
        }
    }
}

std::variant<Response, const EndpointConfig*> WebhookService::route_head(
    const Runtime& runtime, const RequestHead& head) const {
    const auto path = head.target.substr(0, head.target.find('?'));
    if (path == "/healthz") {
        if (head.method != "GET") return get_only();
        return healthz();
    }
    const EndpointConfig* endpoint = runtime.config.find_endpoint(path);
    if (endpoint == nullptr) return error_response(404, "not found");
    // An answer after which the connection is closed: the rest of the request is not read.
    const auto closing = [&](int status, std::string_view message) {
        auto r = error_response(status, message);
        r.endpoint = endpoint->path;
        r.close = true;
        return r;
    };
    if (head.method != "POST") {
        auto r = error_response(405, "method not allowed");
        r.allow = "POST";
        r.endpoint = endpoint->path;
        return r;
    }
    // Only identity and plain chunked framing are read; anything else (gzip, "chunked, gzip")
    // would hand the verifier bytes nobody signed.
    // Where such a request ends is unknown, so no next one can be read.
    if (!head.transfer_encoding.empty() && !iequals(head.transfer_encoding, "chunked")) {
        return closing(501, "unsupported transfer-encoding");
    }
    if (head.content_length && *head.content_length > runtime.config.limits.max_body_bytes) {
        return closing(413, "body too large");
    }
    // A signature missing or not 64 hex digits matches no body: the body is not read (nor held
    // against limits.max_unverified_body_bytes) to say so.
    if (const auto form = signature_form(head.signature); form != SignatureCheck::ok) {
        auto r = closing(401, "unauthorized");
        r.error = to_string(form);
        return r;
    }
    return endpoint;
}

std::variant<Response, Accepted> WebhookService::check_body(const Runtime& runtime,
                                                            const EndpointConfig& endpoint,
                                                            std::string_view signature,
                                                            std::string body) const {
    const auto check = verify_signature(signature, body, endpoint.signing_keys);
    if (check != SignatureCheck::ok) {
        // The client is not told which part failed; the operator's log is.
        auto r = error_response(401, "unauthorized");
        r.endpoint = endpoint.path;
        r.error = to_string(check);
        return r;
    }
    auto envelope = parse_envelope(body);
    if (!envelope) {
        auto r = error_response(400, envelope.error());
        r.endpoint = endpoint.path;
        r.error = envelope.error();
        return r;
    }
    if (endpoint.replay.max_age.count() > 0) {
        if (auto stale = replay_problem(endpoint.replay, envelope.value().created,
                                        std::chrono::system_clock::now())) {
            // Correctly signed but outside the window: to the client, like any bad signature.
            auto r = error_response(401, "unauthorized");
            r.endpoint = endpoint.path;
            r.type = envelope.value().type;
            r.error = *stale;
            return r;
        }
    }
    auto handlers = runtime.handlers_for(endpoint, envelope.value().type);
    return Accepted{make_event(endpoint.path, std::move(body), std::move(envelope).value(),
                               std::chrono::system_clock::now()),
                    std::move(handlers)};
}

void WebhookService::submit(Accepted accepted, SubmitDone done) {
    sink_->submit(accepted.event, std::move(accepted.handlers), std::move(done));
}

namespace {
// {"id":"<id>","status":"<status>"}, sized once: our own UUID and status word need no escaping,
// and a two-field answer no JSON tree.
std::string status_body(std::string_view id, std::string_view status) {
    const std::string_view parts[] = {R"({"id":")", id, R"(","status":")", status, R"("})"};
    std::size_t size = 0;
    for (const auto part : parts) size += part.size();
    std::string body(size, '\0');
    char* out = body.data();
    for (const auto part : parts) {
        std::memcpy(out, part.data(), part.size());
        out += part.size();
    }
    return body;
}
}  // namespace

Response WebhookService::answer(const Event& event, bool unrouted,
                                const SubmitResult& result) const {
    using Status = SubmitResult::Status;
    Response r;
    r.endpoint = event.endpoint;
    r.type = event.envelope.type;
    r.event_id = result.id;
    switch (result.status) {
        case Status::accepted:
            if (unrouted) {
                log::warn("unrouted",
                          {{"event_id", event.id}, {"endpoint", event.endpoint}, {"type", r.type}});
            }
            r.body = status_body(result.id, "accepted");
            return r;
        case Status::duplicate:
            // The same body again (a retry of a request we answered slowly): not delivered twice.
            r.duplicate = true;
            r.body = status_body(result.id, "duplicate");
            return r;
        case Status::overloaded:
        case Status::failed: {
            if (result.status == Status::overloaded && metrics_)
                metrics_->overloaded(result.overload);
            auto e = error_response(
                503, result.status == Status::overloaded ? "overloaded" : "cannot store event");
            e.endpoint = r.endpoint;
            e.type = r.type;
            e.error = result.error;
            return e;
        }
    }
    return error_response(500, "internal error");
}

}  // namespace sigsci
