#pragma once
// An accepted webhook: verified, parsed, and given an id. Immutable once built.
#include <chrono>
#include <memory>
#include <string>

#include "sigsci/envelope.hpp"

namespace sigsci {

struct Event {
    std::string id;           // UUIDv7, the same for every delivery of this event
    std::string received_at;  // RFC 3339 UTC, ms
    std::string endpoint;     // the configured path it arrived on
    std::string body;         // the raw bytes that were signed
    Envelope envelope;
};

using EventPtr = std::shared_ptr<const Event>;

EventPtr make_event(std::string endpoint, std::string body, Envelope envelope,
                    std::chrono::system_clock::time_point received);

// The file handler's line: id, received_at, endpoint, then every envelope field in arrival order.
// Envelope fields named like ours (id, received_at, endpoint) are dropped: ours are authoritative.
Json archive_record(const Event& event);

}  // namespace sigsci
