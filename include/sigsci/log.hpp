#pragma once
// Structured logs: one line per record, JSON by default, text for humans. Field values are
// always escaped, so nothing a client sends can end a line or add a field.
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "sigsci/envelope.hpp"

namespace spdlog::sinks {
class sink;
}

namespace sigsci::log {

enum class Format { json, text };
enum class Level { trace, debug, info, warn, error, off };

using Fields = Json;  // an object; its insertion order is the order fields are written in

std::optional<Format> parse_format(std::string_view name);
std::optional<Level> parse_level(std::string_view name);
std::string_view to_string(Level level);

// Formats one record without a trailing newline. Pure; the logger and tests share it.
std::string format_line(Format format, std::string_view ts, Level level, std::string_view msg,
                        const Fields& fields);

// Sets where lines go (stdout when `sink` is null), their format and the lowest level written.
void configure(Format format, Level level, std::shared_ptr<spdlog::sinks::sink> sink = nullptr);
void set_format(Format format);
void set_level(Level level);
bool enabled(Level level);

void write(Level level, std::string_view msg, const Fields& fields = Fields::object());

inline void debug(std::string_view msg, const Fields& f = Fields::object()) {
    write(Level::debug, msg, f);
}
inline void info(std::string_view msg, const Fields& f = Fields::object()) {
    write(Level::info, msg, f);
}
inline void warn(std::string_view msg, const Fields& f = Fields::object()) {
    write(Level::warn, msg, f);
}
inline void error(std::string_view msg, const Fields& f = Fields::object()) {
    write(Level::error, msg, f);
}

}  // namespace sigsci::log
