#pragma once
// An accepted webhook: verified, validated, and given an id. Immutable once built.
#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "sigsci/envelope.hpp"

namespace sigsci {

struct Event {
    std::string id;           // UUIDv7, the same for every delivery of this event
    std::string received_at;  // RFC 3339 UTC, ms
    std::string endpoint;     // the configured path it arrived on
    std::string body;         // the raw bytes that were signed
    Envelope envelope;        // what routing read from `body`

    // The envelope as a tree, parsed from `body` on first use by any thread. Only handlers that
    // look inside an event (exec placeholders, forward templates, the log handler) pay for it.
    const Json& doc() const;
    // Top-level fields of doc() as given; null when absent.
    const Json& created() const;
    const Json& payload() const;
    const Json& link() const;

  private:
    mutable std::once_flag doc_once_;
    mutable Json doc_;
};

using EventPtr = std::shared_ptr<const Event>;

EventPtr make_event(std::string endpoint, std::string body, Envelope envelope,
                    std::chrono::system_clock::time_point received);

// The file handler's line, newline included: id, received_at, endpoint, then every envelope
// field in arrival order, on one line. Envelope fields named like ours (id, received_at,
// endpoint) are dropped: ours are authoritative. Values are the body's own bytes, not a
// re-serialisation (minified first only when the body has line breaks).
std::string archive_line(const Event& event);

// Appends `text` as a JSON string: quotes, backslashes and control characters escaped, everything
// else as it is. For our own text (ids, times, configured names), which is valid UTF-8.
void append_json_string(std::string& out, std::string_view text);

// The same record as a tree.
Json archive_record(const Event& event);

}  // namespace sigsci
