#pragma once
// The daemon's configuration, validated in full before anything uses it.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "sigsci/handler_registry.hpp"
#include "sigsci/log.hpp"
#include "sigsci/result.hpp"

namespace sigsci {

struct ListenConfig {
    std::string address;  // as written, e.g. "[::1]:8080"
    std::string host;     // the IP literal, without brackets
    std::uint16_t port = 0;
    std::filesystem::path tls_cert;  // both set for a TLS listener (absolute once loaded)
    std::filesystem::path tls_key;

    bool tls() const { return !tls_cert.empty(); }
};

struct Limits {
    std::uint64_t max_body_bytes = 1024 * 1024;
    std::uint32_t max_header_bytes = 16 * 1024;
    std::chrono::milliseconds request_timeout{15000};
    std::chrono::milliseconds idle_timeout{60000};
    std::uint64_t max_connections = 4096;
    std::uint64_t max_connections_per_ip = 256;  // 0: no per-address cap
    std::uint32_t max_header_count = 100;
    std::chrono::milliseconds drain_timeout{10000};
    std::uint64_t max_pending_events = 65536;
    // The bodies of those events, in bytes: what signed senders can make the daemon hold while
    // the spool (or, with it off, a handler) is slower than they are. Never below max_body_bytes.
    std::uint64_t max_pending_bytes = default_max_pending_bytes;
    static constexpr std::uint64_t default_max_pending_bytes = 64ull << 20;
    // Request bodies being read and not yet verified, across all connections: what a client
    // without a key can make the daemon hold. Never below max_body_bytes.
    std::uint64_t max_unverified_body_bytes = default_max_unverified_body_bytes;
    static constexpr std::uint64_t default_max_unverified_body_bytes = 64ull << 20;
    // The share of it one client (as max_connections_per_ip counts them) may hold, so that one
    // address cannot take all of it from the others. Left out of the config: a quarter of
    // max_unverified_body_bytes, at least max_body_bytes (0 when max_connections_per_ip is 0).
    // 0: no share.
    std::uint64_t max_unverified_body_bytes_per_ip = default_max_unverified_body_bytes / 4;
};

struct RetryPolicy {
    std::chrono::milliseconds initial_delay{1000};
    std::chrono::milliseconds max_delay{300000};
    int max_attempts = 10;

    // The wait before attempt `failed_attempts + 1`: initial * 2^(failed-1), capped, then a
    // random point in its upper half (unit_random in [0, 1)) so retries spread out.
    std::chrono::milliseconds delay_after(int failed_attempts, double unit_random) const;

    bool operator==(const RetryPolicy&) const = default;
};

struct SpoolConfig {
    bool enabled = true;
    std::filesystem::path path;   // absolute once loaded
    std::uint64_t max_bytes = 0;  // 0: no limit
    std::chrono::seconds retention{86400};
    std::chrono::seconds duplicate_window{600};
    RetryPolicy retry;

    bool operator==(const SpoolConfig&) const = default;
};

// The admin listener: GET /metrics and GET /healthz, apart from the webhook listeners.
struct AdminConfig {
    std::vector<ListenConfig> listen;  // empty: no admin listener

    bool operator==(const AdminConfig& o) const {
        if (listen.size() != o.listen.size()) return false;
        for (std::size_t i = 0; i < listen.size(); ++i) {
            if (listen[i].address != o.listen[i].address) return false;
        }
        return true;
    }
};

struct LogSettings {
    log::Format format = log::Format::json;
    log::Level level = log::Level::info;
    // `request` lines for 4xx answers (what anyone on the internet can cause) per second; the
    // rest are counted and summarised. 0: no limit.
    std::uint32_t client_errors_per_second = 20;
};

struct RouteConfig {
    std::vector<std::string> types;  // "*" matches every type
    std::vector<std::string> handlers;
};

// The replay window: a correctly signed event whose `created` is too old (or too far ahead)
// is refused, so a captured request cannot be replayed later.
struct ReplayWindow {
    std::chrono::seconds max_age{0};      // 0: no window
    std::chrono::seconds max_future{60};  // allowed clock skew ahead of ours
    bool accept_unparseable = false;      // `created` missing or not a date
};

struct EndpointConfig {
    std::string path;
    std::vector<std::string> signing_keys;  // secret: never log these
    std::vector<RouteConfig> routes;
    ReplayWindow replay;
};

struct Config {
    std::filesystem::path file;
    std::vector<ListenConfig> listen;
    unsigned threads = 0;  // 0 = one per core
    Limits limits;
    LogSettings log;
    std::vector<EndpointConfig> endpoints;
    std::vector<HandlerSpec> handlers;
    SpoolConfig spool;
    AdminConfig admin;
    std::vector<std::string> warnings;  // to be logged once logging is set up

    const EndpointConfig* find_endpoint(std::string_view path) const;
    unsigned effective_threads() const;
};

// Reads, parses and validates; key sources are resolved (so reload re-reads key files).
// Errors read "FILE: key.path: problem".
Result<Config> load_config(const std::filesystem::path& file);

// The same from text; `origin` names the file in errors and relative paths resolve against
// `base_dir`.
Result<Config> parse_config(std::string_view text, const std::string& origin,
                            const std::filesystem::path& base_dir);

// Reads a signing-key file: trailing CR/LF trimmed; empty is an error.
Result<std::string> read_key_file(const std::filesystem::path& path);

}  // namespace sigsci
