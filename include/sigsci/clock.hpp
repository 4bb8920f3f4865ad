#pragma once
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sigsci {

// Milliseconds since the Unix epoch, the spool's unit of time.
std::int64_t now_unix_ms();

// RFC 3339, UTC, millisecond precision: 2026-11-29T17:16:26.123Z
std::string format_rfc3339_ms(std::chrono::system_clock::time_point tp);
// The same from Unix milliseconds, for times a system_clock (nanoseconds, up to 2262) cannot hold.
std::string format_rfc3339_ms(std::int64_t unix_ms);

// "2026-01-31" (UTC midnight) or RFC 3339 "2026-01-31T12:00:00Z" / with an offset, fractional
// seconds of any length (kept to the millisecond), as Unix milliseconds; nullopt for anything
// else or before 1970.
std::optional<std::int64_t> parse_date_ms(const std::string& text);

// A UUIDv7 (RFC 9562): time-ordered, so ids sort by arrival; 74 random bits from OpenSSL.
std::string new_event_id(std::chrono::system_clock::time_point now);
// The Unix milliseconds of an id made by new_event_id (its first 48 bits); nullopt for text that
// is not a UUIDv7 in that lower-case form.
std::optional<std::int64_t> event_id_ms(std::string_view id);

}  // namespace sigsci
