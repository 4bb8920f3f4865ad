#include "sigsci/envelope.hpp"

#include <simdjson.h>

#include <algorithm>
#include <new>
#include <vector>

namespace sigsci {

namespace {

// One parser per thread, reused: it keeps its buffers, so a parse allocates nothing once it has
// seen a body of that size. After an unusually large body the buffers are let go, so one
// 1 MiB request does not pin megabytes per thread for the life of the process.
constexpr std::size_t keep_parser_capacity = 256 * 1024;

simdjson::dom::parser& thread_parser() {
    thread_local simdjson::dom::parser parser;
    // Capacity 0: never allocated on this thread (allocate() also sets the depth cap).
    if (parser.capacity() == 0 || parser.capacity() > keep_parser_capacity) {
        parser = simdjson::dom::parser();
        if (parser.allocate(4096, max_envelope_depth) != simdjson::SUCCESS) throw std::bad_alloc();
    }
    return parser;
}

// Top-level names must be unique: with two "type" fields, this receiver and a consumer of the
// archive could each believe a different one. Sorts `names`.
template <class Names>
bool has_repeats(Names& names) {
    std::sort(names.begin(), names.end());
    return std::adjacent_find(names.begin(), names.end()) != names.end();
}

// The slow way, for what simdjson refuses but JSON allows: numbers beyond 64-bit integers or
// doubles (123456789012345678901234567890, 1e400). nlohmann reads them as doubles, as it
// always has here; the same rules are applied to the tree.
Result<Envelope> parse_with_tree(std::string_view body) {
    // nlohmann takes a NUL byte for the end of the input, and would accept whatever follows
    // it; valid JSON never holds a raw NUL.
    if (body.find('\0') != std::string_view::npos) return Error{"body is not valid JSON"};
    bool too_deep = false;
    std::vector<std::string> names;
    // nlohmann's depth counts from 0 at the envelope object: level N has depth N - 1.
    auto watch = [&](int depth, Json::parse_event_t event, Json& parsed) {
        if (depth >= max_envelope_depth) too_deep = true;
        if (event == Json::parse_event_t::key && depth == 1 && parsed.is_string()) {
            names.push_back(parsed.get<std::string>());
        }
        return !too_deep;
    };
    Json doc = Json::parse(body.begin(), body.end(), watch, /*allow_exceptions=*/false,
                           /*ignore_comments=*/false);
    if (too_deep) return Error{"body is nested too deeply"};
    if (doc.is_discarded()) return Error{"body is not valid JSON"};
    if (!doc.is_object()) return Error{"body is not a JSON object"};
    if (has_repeats(names)) return Error{"envelope repeats a top-level field"};
    const auto type = doc.find("type");
    if (type == doc.end()) return Error{"envelope has no \"type\""};
    if (!type->is_string()) return Error{"envelope \"type\" is not a string"};
    Envelope envelope;
    envelope.type = type->get<std::string>();
    if (const auto created = doc.find("created"); created != doc.end() && created->is_string()) {
        envelope.created = created->get<std::string>();
    }
    envelope.shadows_ours = std::any_of(names.begin(), names.end(),
                                        [](const std::string& n) { return is_archive_field(n); });
    return envelope;
}

}  // namespace

bool is_archive_field(std::string_view name) {
    return name == "id" || name == "received_at" || name == "endpoint";
}

Result<Envelope> parse_envelope(std::string_view body) {
    auto& parser = thread_parser();
    simdjson::dom::element root;
    if (const auto error = parser.parse(body.data(), body.size()).get(root)) {
        if (error == simdjson::DEPTH_ERROR) return Error{"body is nested too deeply"};
        if (error == simdjson::NUMBER_ERROR || error == simdjson::NUMBER_OUT_OF_RANGE) {
            return parse_with_tree(body);
        }
        return Error{"body is not valid JSON"};
    }
    simdjson::dom::object object;
    if (root.get_object().get(object) != simdjson::SUCCESS) {
        return Error{"body is not a JSON object"};
    }
    Envelope envelope;
    bool has_type = false;
    thread_local std::vector<std::string_view> names;
    names.clear();
    for (auto field : object) {
        names.push_back(field.key);
        if (field.key == "type") {
            std::string_view type;
            if (field.value.get_string().get(type) != simdjson::SUCCESS) {
                return Error{"envelope \"type\" is not a string"};
            }
            envelope.type = type;
            has_type = true;
        } else if (field.key == "created") {
            std::string_view created;
            if (field.value.get_string().get(created) == simdjson::SUCCESS) {
                envelope.created.emplace(created);
            }
        } else if (is_archive_field(field.key)) {
            envelope.shadows_ours = true;
        }
    }
    if (has_repeats(names)) return Error{"envelope repeats a top-level field"};
    if (!has_type) return Error{"envelope has no \"type\""};
    return envelope;
}

Json envelope_tree(std::string_view body) {
    return Json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false,
                       /*ignore_comments=*/false);
}

std::string minify_json(std::string_view json) {
    std::string out(json.size(), '\0');
    std::size_t length = 0;
    if (simdjson::minify(json.data(), json.size(), out.data(), length) != simdjson::SUCCESS) {
        // Not reached for validated JSON; the slow way still gives one line.
        return envelope_tree(json).dump(-1, ' ', false, Json::error_handler_t::replace);
    }
    out.resize(length);
    return out;
}

}  // namespace sigsci
