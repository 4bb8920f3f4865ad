#include "sigsci/envelope.hpp"

namespace sigsci {

namespace {
const Json& field_or_null(const Json& doc, const char* name) {
    static const Json null_value;
    const auto it = doc.find(name);
    return it == doc.end() ? null_value : *it;
}
}  // namespace

const Json& Envelope::created() const {
    return field_or_null(doc, "created");
}
const Json& Envelope::payload() const {
    return field_or_null(doc, "payload");
}
const Json& Envelope::link() const {
    return field_or_null(doc, "link");
}

Result<Envelope> parse_envelope(std::string_view body) {
    bool too_deep = false;
    auto depth_guard = [&too_deep](int depth, Json::parse_event_t, Json&) {
        if (depth > max_envelope_depth) too_deep = true;
        return !too_deep;
    };
    Json doc = Json::parse(body.begin(), body.end(), depth_guard, /*allow_exceptions=*/false,
                           /*ignore_comments=*/false);
    if (too_deep) return Error{"body is nested too deeply"};
    if (doc.is_discarded()) return Error{"body is not valid JSON"};
    if (!doc.is_object()) return Error{"body is not a JSON object"};
    const auto type = doc.find("type");
    if (type == doc.end()) return Error{"envelope has no \"type\""};
    if (!type->is_string()) return Error{"envelope \"type\" is not a string"};
    Envelope envelope{std::move(doc), {}};
    envelope.type = envelope.doc["type"].get<std::string>();
    return envelope;
}

}  // namespace sigsci
