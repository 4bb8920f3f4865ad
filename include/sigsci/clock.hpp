#pragma once
#include <chrono>
#include <string>

namespace sigsci {

// RFC 3339, UTC, millisecond precision: 2026-11-29T17:16:26.123Z
std::string format_rfc3339_ms(std::chrono::system_clock::time_point tp);

// A UUIDv7 (RFC 9562): time-ordered, so ids sort by arrival; 74 random bits from OpenSSL.
std::string new_event_id(std::chrono::system_clock::time_point now);

}  // namespace sigsci
