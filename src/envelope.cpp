#include "sigsci/envelope.hpp"

#include <simdjson.h>

#include <algorithm>
#include <array>
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
    thread_local bool sized = false;
    if (!sized || parser.capacity() > keep_parser_capacity) {
        parser = simdjson::dom::parser();
        if (parser.allocate(4096, max_envelope_depth) != simdjson::SUCCESS) throw std::bad_alloc();
        sized = true;
    }
    return parser;
}

constexpr std::array<std::string_view, 3> our_fields{"id", "received_at", "endpoint"};

}  // namespace

Result<Envelope> parse_envelope(std::string_view body) {
    auto& parser = thread_parser();
    simdjson::dom::element root;
    if (const auto error = parser.parse(body.data(), body.size()).get(root)) {
        if (error == simdjson::DEPTH_ERROR) return Error{"body is nested too deeply"};
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
        } else if (std::find(our_fields.begin(), our_fields.end(), field.key) != our_fields.end()) {
            envelope.shadows_ours = true;
        }
    }
    // Top-level names must be unique: with two "type" fields, this receiver and a consumer of
    // the archive could each believe a different one.
    std::sort(names.begin(), names.end());
    if (std::adjacent_find(names.begin(), names.end()) != names.end()) {
        return Error{"envelope repeats a top-level field"};
    }
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
