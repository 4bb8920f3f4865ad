#include "sigsci/clock.hpp"

#include <openssl/rand.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <optional>
#include <stdexcept>
#include <string>

namespace sigsci {

std::int64_t now_unix_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string format_rfc3339_ms(std::int64_t unix_ms) {
    const std::int64_t ms = ((unix_ms % 1000) + 1000) % 1000;
    const auto secs = static_cast<std::time_t>((unix_ms - ms) / 1000);
    // The text up to the second is kept per thread: every request formats its receipt time, and
    // gmtime_r plus snprintf cost more than the rest of the event's set-up.
    thread_local std::time_t cached_secs = -1;
    thread_local char prefix[64];  // "YYYY-MM-DDTHH:MM:SS", NUL-terminated
    if (secs != cached_secs) {
        std::tm tm{};
        gmtime_r(&secs, &tm);
        std::snprintf(prefix, sizeof prefix, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                      tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        cached_secs = secs;
    }
    // "YYYY-MM-DDTHH:MM:SS" then ".mmmZ", built in place: one allocation for the result.
    char text[sizeof prefix + 8];
    const auto n = std::strlen(prefix);
    std::memcpy(text, prefix, n);
    const auto m = static_cast<int>(ms);
    text[n] = '.';
    text[n + 1] = static_cast<char>('0' + m / 100);
    text[n + 2] = static_cast<char>('0' + m / 10 % 10);
    text[n + 3] = static_cast<char>('0' + m % 10);
    text[n + 4] = 'Z';
    return std::string(text, n + 5);
}

std::string format_rfc3339_ms(std::chrono::system_clock::time_point tp) {
    return format_rfc3339_ms(static_cast<std::int64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(tp.time_since_epoch()).count()));
}

std::string new_event_id(std::chrono::system_clock::time_point now) {
    // Ten random bytes an id, taken from a per-thread buffer filled 64 ids at a time: one
    // RAND_bytes call cost more than the rest of the request's bookkeeping. The process never
    // forks without exec, so no two processes share a buffer.
    constexpr std::size_t per_id = 10;
    thread_local std::array<unsigned char, per_id * 64> pool{};
    thread_local std::size_t used = pool.size();
    if (used == pool.size()) {
        if (RAND_bytes(pool.data(), static_cast<int>(pool.size())) != 1) {
            throw std::runtime_error("OpenSSL RAND_bytes failed");
        }
        used = 0;
    }
    std::array<unsigned char, 16> b{};
    std::memcpy(b.data() + 6, pool.data() + used, per_id);
    std::memset(pool.data() + used, 0, per_id);  // an id's bytes are not kept after use
    used += per_id;
    const auto ms = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count());
    for (int i = 0; i < 6; ++i)
        b[static_cast<std::size_t>(i)] = static_cast<unsigned char>(ms >> (40 - 8 * i));
    b[6] = static_cast<unsigned char>(0x70 | (b[6] & 0x0f));  // version 7
    b[8] = static_cast<unsigned char>(0x80 | (b[8] & 0x3f));  // RFC 9562 variant
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(36);
    for (std::size_t i = 0; i < b.size(); ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
        out += digits[b[i] >> 4];
        out += digits[b[i] & 0x0f];
    }
    return out;
}

std::optional<std::int64_t> event_id_ms(std::string_view id) {
    // xxxxxxxx-xxxx-7xxx-[89ab]xxx-xxxxxxxxxxxx
    if (id.size() != 36 || id[14] != '7') return std::nullopt;
    std::int64_t ms = 0;
    for (std::size_t i = 0; i < id.size(); ++i) {
        const char c = id[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') return std::nullopt;
            continue;
        }
        int v = -1;
        if (c >= '0' && c <= '9') v = c - '0';
        if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
        if (v < 0) return std::nullopt;
        if (i < 13) ms = ms * 16 + v;
        if (i == 19 && (v & 0xc) != 0x8) return std::nullopt;
    }
    return ms;
}

std::optional<std::int64_t> parse_date_ms(const std::string& text) {
    int y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0;
    int consumed = 0;
    if (std::sscanf(text.c_str(), "%4d-%2d-%2d%n", &y, &mo, &d, &consumed) != 3 || consumed != 10) {
        return std::nullopt;
    }
    std::int64_t offset_s = 0;
    std::int64_t frac_ms = 0;
    if (text.size() > 10) {
        int used = 0;
        if ((text[10] != 'T' && text[10] != 't' && text[10] != ' ') ||
            std::sscanf(text.c_str() + 11, "%2d:%2d:%2d%n", &h, &mi, &s, &used) != 3 || used != 8) {
            return std::nullopt;
        }
        std::size_t pos = 19;
        if (pos < text.size() && text[pos] == '.') {
            ++pos;
            const auto digits_from = pos;
            while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
                if (pos - digits_from < 3) frac_ms = frac_ms * 10 + (text[pos] - '0');
                ++pos;
            }
            if (pos == digits_from) return std::nullopt;  // "12:00:00.Z"
            for (auto n = pos - digits_from; n < 3; ++n) frac_ms *= 10;
        }
        const std::string zone = text.substr(pos);
        int oh = 0, om = 0;
        if (zone == "Z" || zone == "z") {
            offset_s = 0;
        } else if (zone.size() == 6 && (zone[0] == '+' || zone[0] == '-') &&
                   std::sscanf(zone.c_str() + 1, "%2d:%2d", &oh, &om) == 2) {
            offset_s = (zone[0] == '+' ? 1 : -1) * (oh * 3600 + om * 60);
        } else {
            return std::nullopt;
        }
    }
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60)
        return std::nullopt;
    std::tm tm{};
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = s;
    return (static_cast<std::int64_t>(timegm(&tm)) - offset_s) * 1000 + frac_ms;
}

}  // namespace sigsci
