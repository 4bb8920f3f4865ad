#include "sigsci/log.hpp"

#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <atomic>
#include <chrono>
#include <mutex>

#include "sigsci/clock.hpp"

namespace sigsci::log {

namespace {

spdlog::level::level_enum to_spdlog(Level level) {
    switch (level) {
        case Level::trace:
            return spdlog::level::trace;
        case Level::debug:
            return spdlog::level::debug;
        case Level::info:
            return spdlog::level::info;
        case Level::warn:
            return spdlog::level::warn;
        case Level::error:
            return spdlog::level::err;
        case Level::off:
            return spdlog::level::off;
    }
    return spdlog::level::info;
}

// Invalid UTF-8 (a raw request target, say) is replaced rather than thrown on.
std::string dump(const Json& value) {
    return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

bool is_bare_word(std::string_view s) {
    if (s.empty()) return false;
    for (unsigned char c : s) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' || c == ':' ||
                        c == '/' || c == '@' || c == '+' || c == '[' || c == ']';
        if (!ok) return false;
    }
    return true;
}

struct State {
    std::atomic<Format> format{Format::json};
    // The lowest level written, readable without the mutex: callers check it before they build
    // a record's fields.
    std::atomic<int> min_level{static_cast<int>(Level::info)};
    std::mutex mutex;  // guards replacing `logger`
    std::shared_ptr<spdlog::logger> logger;
};

// Never destroyed: a thread the daemon left to the process's exit (a reload stuck opening a
// file on a hung mount, a delivery that outlived the drain) may still log while exit() runs the
// static destructors, and must find the logger alive. Reachable through `s`, so not a leak.
State& state() {
    static State& s = *new State;
    return s;
}

std::shared_ptr<spdlog::logger> current_logger() {
    auto& s = state();
    std::lock_guard lock(s.mutex);
    if (!s.logger) {
        s.logger = std::make_shared<spdlog::logger>(
            "sigsci", std::make_shared<spdlog::sinks::stdout_sink_mt>());
        s.logger->set_pattern("%v");
        s.logger->set_level(spdlog::level::info);
    }
    return s.logger;
}

}  // namespace

std::optional<Format> parse_format(std::string_view name) {
    if (name == "json") return Format::json;
    if (name == "text") return Format::text;
    return std::nullopt;
}

std::optional<Level> parse_level(std::string_view name) {
    if (name == "trace") return Level::trace;
    if (name == "debug") return Level::debug;
    if (name == "info") return Level::info;
    if (name == "warn") return Level::warn;
    if (name == "error") return Level::error;
    if (name == "off") return Level::off;
    return std::nullopt;
}

std::string_view to_string(Level level) {
    switch (level) {
        case Level::trace:
            return "trace";
        case Level::debug:
            return "debug";
        case Level::info:
            return "info";
        case Level::warn:
            return "warn";
        case Level::error:
            return "error";
        case Level::off:
            return "off";
    }
    return "info";
}

std::string format_line(Format format, std::string_view ts, Level level, std::string_view msg,
                        const Fields& fields) {
    std::string line;
    line.reserve(128);
    if (format == Format::json) {
        line += "{\"ts\":\"";
        line += ts;
        line += "\",\"level\":\"";
        line += to_string(level);
        line += "\",\"msg\":";
        line += dump(Json(std::string(msg)));
        if (fields.is_object()) {
            for (const auto& [key, value] : fields.items()) {
                line += ',';
                line += dump(Json(key));
                line += ':';
                line += dump(value);
            }
        }
        line += '}';
        return line;
    }
    line += ts;
    line += ' ';
    std::string lvl(to_string(level));
    for (auto& c : lvl) c = static_cast<char>(c - 'a' + 'A');
    line += lvl;
    line += ' ';
    line += is_bare_word(msg) ? std::string(msg) : dump(Json(std::string(msg)));
    if (fields.is_object()) {
        for (const auto& [key, value] : fields.items()) {
            line += ' ';
            line += is_bare_word(key) ? key : dump(Json(key));
            line += '=';
            if (value.is_string() && is_bare_word(value.get_ref<const std::string&>())) {
                line += value.get_ref<const std::string&>();
            } else {
                line += dump(value);
            }
        }
    }
    return line;
}

void configure(Format format, Level level, std::shared_ptr<spdlog::sinks::sink> sink) {
    auto& s = state();
    if (!sink) sink = std::make_shared<spdlog::sinks::stdout_sink_mt>();
    auto logger = std::make_shared<spdlog::logger>("sigsci", std::move(sink));
    logger->set_pattern("%v");
    logger->set_level(to_spdlog(level));
    logger->flush_on(spdlog::level::trace);
    s.format.store(format);
    s.min_level.store(static_cast<int>(level));
    std::lock_guard lock(s.mutex);
    s.logger = std::move(logger);
}

void set_format(Format format) {
    state().format.store(format);
}

void set_level(Level level) {
    current_logger()->set_level(to_spdlog(level));
}

bool enabled(Level level) {
    return current_logger()->should_log(to_spdlog(level));
}

void write(Level level, std::string_view msg, const Fields& fields) {
    if (!enabled(level)) return;
    auto logger = current_logger();
    const auto spd_level = to_spdlog(level);
    const std::string line =
        format_line(state().format.load(), format_rfc3339_ms(std::chrono::system_clock::now()),
                    level, msg, fields);
    logger->log(spd_level, "{}", line);
}

}  // namespace sigsci::log
