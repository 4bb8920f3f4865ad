#pragma once
// The Generic Webhook envelope: {"created", "type", "payload", "link", ...extra fields}.
//
// The request path validates the whole body and reads only the top-level fields it needs to
// decide (type, created); it builds no tree. Handlers that need the envelope as a tree (exec
// placeholders, forward templates, the log handler) get one from Event::doc(), built once, off
// the request path.
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <string_view>

#include "sigsci/result.hpp"

namespace sigsci {

// Envelopes keep their fields in the order they arrived, so archives read like the original.
using Json = nlohmann::ordered_json;

// Nesting deeper than this (the envelope object itself is level 1) is refused: serialising it
// recursively could exhaust a thread's stack.
inline constexpr int max_envelope_depth = 128;

// The fields the archive puts first ("id", "received_at", "endpoint"); an envelope field of the
// same name is dropped from the archive record.
bool is_archive_field(std::string_view name);

struct Envelope {
    std::string type;                    // the top-level "type", validated to be a string
    std::optional<std::string> created;  // the top-level "created" when it is a string, as given
    bool shadows_ours = false;           // has a top-level "id", "received_at" or "endpoint"
};

// Validates `body` as exactly one JSON object (RFC 8259, UTF-8, at most max_envelope_depth deep)
// whose top-level names are unique and whose "type" is a string, and returns what routing needs.
// Errors are short phrases fit for a 400 answer.
Result<Envelope> parse_envelope(std::string_view body);

// The body as a tree, fields in arrival order; discarded (is_discarded()) if it is not JSON. For
// bodies parse_envelope accepted.
Json envelope_tree(std::string_view body);

// The same JSON text without insignificant whitespace, so it fits on one line. `json` must be
// valid JSON (parse_envelope accepted it); strings and numbers are kept byte for byte.
std::string minify_json(std::string_view json);

}  // namespace sigsci
