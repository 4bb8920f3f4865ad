#pragma once
// The Generic Webhook envelope: {"created", "type", "payload", "link", ...extra fields}.
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

#include "sigsci/result.hpp"

namespace sigsci {

// Envelopes keep their fields in the order they arrived, so archives read like the original.
using Json = nlohmann::ordered_json;

// Nesting deeper than this is refused: serialising it recursively could exhaust a thread's stack.
inline constexpr int max_envelope_depth = 128;

struct Envelope {
    Json doc;          // the whole envelope object, every field kept
    std::string type;  // doc["type"], validated to be a string

    // Optional fields as given (null when absent); `created` is not reinterpreted.
    const Json& created() const;
    const Json& payload() const;
    const Json& link() const;
};

Result<Envelope> parse_envelope(std::string_view body);

}  // namespace sigsci
