#include "sigsci/config.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "sigsci/config_reader.hpp"
#include "sigsci/tls.hpp"

namespace sigsci {

namespace {

constexpr std::uint64_t max_key_file_bytes = 64 * 1024;
constexpr std::uint64_t max_config_file_bytes = 4 * 1024 * 1024;

bool is_ip_literal(const std::string& host, bool v6) {
    unsigned char buf[16];
    return inet_pton(v6 ? AF_INET6 : AF_INET, host.c_str(), buf) == 1;
}

ListenConfig parse_listen_address(const ConfigNode& node) {
    const std::string text = node.as_nonempty_string();
    ListenConfig out;
    out.address = text;
    std::string port_text;
    if (text.front() == '[') {
        const auto close = text.find("]:");
        if (close == std::string::npos) node.fail("must look like \"[::1]:8080\"");
        out.host = text.substr(1, close - 1);
        port_text = text.substr(close + 2);
        if (!is_ip_literal(out.host, true))
            node.fail("\"" + out.host + "\" is not an IPv6 address");
    } else {
        const auto colon = text.rfind(':');
        if (colon == std::string::npos) node.fail("must look like \"127.0.0.1:8080\"");
        out.host = text.substr(0, colon);
        port_text = text.substr(colon + 1);
        if (!is_ip_literal(out.host, false)) {
            node.fail(
                "\"" + out.host +
                "\" is not an IPv4 address (IPv6 goes in brackets; host names are not resolved)");
        }
    }
    if (port_text.empty() || port_text.size() > 5 ||
        !std::all_of(port_text.begin(), port_text.end(),
                     [](char c) { return c >= '0' && c <= '9'; }) ||
        std::stoul(port_text) > 65535) {
        node.fail("port must be a number from 0 to 65535");
    }
    out.port = static_cast<std::uint16_t>(std::stoul(port_text));
    return out;
}

ListenConfig parse_listen(const ConfigNode& node, const ConfigContext& ctx) {
    if (node.json().is_string()) return parse_listen_address(node);
    auto obj = node.as_object();
    auto out = parse_listen_address(obj.require("address"));
    if (auto t = obj.get("tls")) {
        auto tls = t->as_object();
        auto path = [&](const char* key) {
            std::filesystem::path p = tls.require(key).as_nonempty_string();
            return std::filesystem::absolute(p.is_relative() ? ctx.base_dir / p : p);
        };
        out.tls_cert = path("cert");
        out.tls_key = path("key");
        tls.finish();
        try {
            make_server_tls(out.tls_cert,
                            out.tls_key);  // a bad file fails the config, not a handshake
        } catch (const std::exception& e) {
            t->fail(e.what());
        }
    }
    obj.finish();
    return out;
}

Limits parse_limits(ConfigObject obj) {
    Limits l;
    using ms = std::chrono::milliseconds;
    constexpr std::uint64_t day_ms = 24ull * 3600 * 1000;
    if (auto n = obj.get("max_body_bytes")) l.max_body_bytes = n->as_uint(1, 1ull << 30);
    if (auto n = obj.get("max_header_bytes"))
        l.max_header_bytes = static_cast<std::uint32_t>(n->as_uint(1024, 1u << 20));
    if (auto n = obj.get("request_timeout_ms")) l.request_timeout = ms(n->as_uint(1, day_ms));
    if (auto n = obj.get("idle_timeout_ms")) l.idle_timeout = ms(n->as_uint(1, day_ms));
    if (auto n = obj.get("max_connections")) l.max_connections = n->as_uint(1, 1'000'000);
    if (auto n = obj.get("max_connections_per_ip"))
        l.max_connections_per_ip = n->as_uint(0, 1'000'000);
    if (auto n = obj.get("max_header_count"))
        l.max_header_count = static_cast<std::uint32_t>(n->as_uint(1, 10'000));
    if (auto n = obj.get("drain_timeout_ms")) l.drain_timeout = ms(n->as_uint(0, day_ms));
    if (auto n = obj.get("max_pending_events")) l.max_pending_events = n->as_uint(1, 100'000'000);
    // A budget of body bytes: at least one body of the largest size must fit in it. Left out,
    // it is raised to max_body_bytes; set below it, it is an error.
    const auto body_budget = [&](const char* key, std::uint64_t& value, const char* why) {
        if (auto n = obj.get(key)) {
            value = n->as_uint(1, 1ull << 40);
            if (value < l.max_body_bytes) {
                n->fail("must be at least limits.max_body_bytes (" +
                        std::to_string(l.max_body_bytes) + "), or " + why);
            }
        } else {
            value = std::max(value, l.max_body_bytes);
        }
    };
    body_budget("max_unverified_body_bytes", l.max_unverified_body_bytes,
                "no body of that size is ever read");
    if (auto n = obj.get("max_unverified_body_bytes_per_ip")) {
        l.max_unverified_body_bytes_per_ip = n->as_uint(0, 1ull << 40);
        if (l.max_unverified_body_bytes_per_ip != 0 &&
            l.max_unverified_body_bytes_per_ip < l.max_body_bytes) {
            n->fail("must be 0 or at least limits.max_body_bytes (" +
                    std::to_string(l.max_body_bytes) + "), or no body of that size is ever read");
        }
    } else if (l.max_connections_per_ip == 0) {
        l.max_unverified_body_bytes_per_ip = 0;  // behind a proxy, every client is one address
    } else {
        l.max_unverified_body_bytes_per_ip =
            std::max(l.max_unverified_body_bytes / 4, l.max_body_bytes);
    }
    body_budget("max_pending_bytes", l.max_pending_bytes, "no event of that size is ever accepted");
    obj.finish();
    return l;
}

LogSettings parse_log(ConfigObject obj) {
    LogSettings s;
    if (auto n = obj.get("format")) {
        auto f = log::parse_format(n->as_string());
        if (!f) n->fail("must be \"json\" or \"text\"");
        s.format = *f;
    }
    if (auto n = obj.get("level")) {
        auto l = log::parse_level(n->as_string());
        if (!l)
            n->fail("must be one of \"trace\", \"debug\", \"info\", \"warn\", \"error\", \"off\"");
        s.level = *l;
    }
    if (auto n = obj.get("client_errors_per_second"))
        s.client_errors_per_second = static_cast<std::uint32_t>(n->as_uint(0, 1'000'000));
    obj.finish();
    return s;
}

std::string read_key_source(const ConfigNode& node, const ConfigContext& ctx) {
    auto obj = node.as_object();
    const char* sources[] = {"file", "env", "credential", "value"};
    int count = 0;
    for (const char* s : sources) count += obj.has(s) ? 1 : 0;
    if (count != 1) {
        obj.fail("needs exactly one of \"file\", \"env\", \"credential\", \"value\"");
    }
    std::string key;
    if (auto n = obj.get("file")) {
        std::filesystem::path p = n->as_nonempty_string();
        if (p.is_relative()) p = ctx.base_dir / p;
        auto r = read_key_file(p);
        if (!r) n->fail(r.error());
        key = std::move(r).value();
    } else if (auto e = obj.get("env")) {
        const auto name = e->as_nonempty_string();
        const char* v = std::getenv(name.c_str());
        if (v == nullptr) e->fail("environment variable " + name + " is not set");
        key = v;
        if (key.empty()) e->fail("environment variable " + name + " is empty");
    } else if (auto c = obj.get("credential")) {
        const auto name = c->as_nonempty_string();
        if (name.find('/') != std::string::npos || name == "." || name == "..") {
            c->fail("must be a credential name, not a path");
        }
        const char* dir = std::getenv("CREDENTIALS_DIRECTORY");
        if (dir == nullptr || *dir == '\0') {
            c->fail(
                "$CREDENTIALS_DIRECTORY is not set (credentials need systemd's LoadCredential=)");
        }
        auto r = read_key_file(std::filesystem::path(dir) / name);
        if (!r) c->fail(r.error());
        key = std::move(r).value();
    } else if (auto v = obj.get("value")) {
        key = v->as_string();
        if (key.empty()) v->fail("key is empty");
        if (ctx.warnings) {
            ctx.warnings->push_back(v->path() +
                                    ": the key is written in the config file; prefer \"file\", "
                                    "\"env\" or \"credential\"");
        }
    }
    obj.finish();
    return key;
}

std::vector<std::string> parse_string_list(const ConfigNode& node) {
    auto items = node.as_array();
    if (items.empty()) node.fail("must not be empty");
    std::vector<std::string> out;
    for (const auto& item : items) out.push_back(item.as_nonempty_string());
    return out;
}

bool valid_handler_name(const std::string& name) {
    return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '-' || c == '_' || c == '.';
    });
}

std::vector<HandlerSpec> parse_handlers(ConfigObject obj, const ConfigContext& ctx) {
    std::vector<HandlerSpec> out;
    for (const auto& name : obj.keys()) {
        auto node = obj.require(name);
        if (!valid_handler_name(name)) {
            node.fail("handler names may use only letters, digits, '-', '_' and '.'");
        }
        auto cfg = node.as_object();
        const auto kind = cfg.require("kind").as_string();
        const auto kinds = handler_kinds();
        const auto it = std::find_if(kinds.begin(), kinds.end(),
                                     [&](const HandlerKind& k) { return k.kind == kind; });
        if (it == kinds.end()) {
            std::string known;
            for (const auto& k : kinds) known += (known.empty() ? "" : ", ") + std::string(k.kind);
            cfg.require("kind").fail("unknown handler kind \"" + kind +
                                     "\" (this version has: " + known + ")");
        }
        auto spec = it->parse(name, cfg, ctx);
        spec.name = name;
        spec.kind = kind;
        out.push_back(std::move(spec));
    }
    obj.finish();
    return out;
}

EndpointConfig parse_endpoint(const ConfigNode& node, const std::vector<HandlerSpec>& handlers,
                              const ConfigContext& ctx) {
    auto obj = node.as_object();
    EndpointConfig ep;
    auto path_node = obj.require("path");
    ep.path = path_node.as_nonempty_string();
    if (ep.path.front() != '/') path_node.fail("must start with '/'");
    if (ep.path == "/healthz") path_node.fail("/healthz is reserved for the health check");
    for (unsigned char c : ep.path) {
        if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#') {
            path_node.fail("must not contain spaces, control characters, '?' or '#'");
        }
    }
    if (auto n = obj.get("max_age_s")) {
        ep.replay.max_age = std::chrono::seconds(n->as_uint(1, 366ull * 24 * 3600));
    }
    if (auto n = obj.get("max_future_s")) {
        if (ep.replay.max_age.count() == 0) n->fail("needs max_age_s");
        ep.replay.max_future = std::chrono::seconds(n->as_uint(0, 24 * 3600));
    }
    if (auto n = obj.get("unparseable_created")) {
        if (ep.replay.max_age.count() == 0) n->fail("needs max_age_s");
        const auto v = n->as_string();
        if (v != "reject" && v != "accept") n->fail("must be \"reject\" or \"accept\"");
        ep.replay.accept_unparseable = v == "accept";
    }
    auto keys_node = obj.require("signing_keys");
    auto keys = keys_node.as_array();
    if (keys.empty()) keys_node.fail("needs at least one key");
    for (const auto& k : keys) ep.signing_keys.push_back(read_key_source(k, ctx));
    if (auto routes = obj.get("routes")) {
        for (const auto& r : routes->as_array()) {
            auto robj = r.as_object();
            RouteConfig route;
            route.types = parse_string_list(robj.require("types"));
            auto hnode = robj.require("handlers");
            route.handlers = parse_string_list(hnode);
            const auto hitems = hnode.as_array();
            for (std::size_t i = 0; i < route.handlers.size(); ++i) {
                const auto& name = route.handlers[i];
                if (std::none_of(handlers.begin(), handlers.end(),
                                 [&](const HandlerSpec& h) { return h.name == name; })) {
                    hitems[i].fail("no handler named \"" + name + "\" in \"handlers\"");
                }
            }
            robj.finish();
            ep.routes.push_back(std::move(route));
        }
    }
    if (ep.routes.empty() && ctx.warnings) {
        ctx.warnings->push_back(obj.path() + ": no routes; every event on " + ep.path +
                                " will be accepted and logged as unrouted");
    }
    obj.finish();
    return ep;
}

std::filesystem::path default_spool_path() {
    // systemd's StateDirectory= sets $STATE_DIRECTORY (several, colon-separated: take the first).
    if (const char* dir = std::getenv("STATE_DIRECTORY"); dir != nullptr && *dir != '\0') {
        std::string first(dir);
        first = first.substr(0, first.find(':'));
        return std::filesystem::path(first) / "spool.db";
    }
    return std::filesystem::absolute("spool.db");
}

constexpr const char* default_admin_address = "127.0.0.1:9102";

AdminConfig parse_admin(ConfigObject obj, const ConfigContext& ctx) {
    AdminConfig a;
    if (auto n = obj.get("listen")) {
        auto items = n->as_array();
        if (items.empty())
            n->fail("needs at least one address (leave out \"admin\" to have no admin listener)");
        for (const auto& item : items) {
            a.listen.push_back(parse_listen_address(item));
            const auto& host = a.listen.back().host;
            const bool loopback = host.rfind("127.", 0) == 0 || host == "::1";
            if (!loopback && ctx.warnings) {
                ctx.warnings->push_back(item.path() + ": " + a.listen.back().address +
                                        " is not loopback; /metrics will be reachable from "
                                        "other hosts");
            }
        }
    } else {
        ListenConfig fallback;
        fallback.address = default_admin_address;
        fallback.host = "127.0.0.1";
        fallback.port = 9102;
        a.listen.push_back(std::move(fallback));
    }
    obj.finish();
    return a;
}

SpoolConfig parse_spool(ConfigObject obj, const ConfigContext& ctx) {
    SpoolConfig s;
    using ms = std::chrono::milliseconds;
    constexpr std::uint64_t year_s = 366ull * 24 * 3600;
    if (auto n = obj.get("enabled")) s.enabled = n->as_bool();
    if (auto n = obj.get("path")) {
        s.path = n->as_nonempty_string();
        if (s.path.is_relative()) s.path = ctx.base_dir / s.path;
        s.path = std::filesystem::absolute(s.path);
    } else {
        s.path = default_spool_path();
    }
    if (auto n = obj.get("max_bytes")) s.max_bytes = n->as_uint(0, 1ull << 50);
    if (auto n = obj.get("retention_s")) s.retention = std::chrono::seconds(n->as_uint(1, year_s));
    if (auto n = obj.get("duplicate_window_s"))
        s.duplicate_window = std::chrono::seconds(n->as_uint(0, year_s));
    if (auto r = obj.get("retry")) {
        auto ro = r->as_object();
        if (auto n = ro.get("initial_delay_ms"))
            s.retry.initial_delay = ms(n->as_uint(1, 86400000));
        if (auto n = ro.get("max_delay_ms")) s.retry.max_delay = ms(n->as_uint(1, 7 * 86400000ull));
        if (auto n = ro.get("max_attempts"))
            s.retry.max_attempts = static_cast<int>(n->as_uint(1, 1000));
        if (s.retry.max_delay < s.retry.initial_delay) {
            ro.require("max_delay_ms").fail("must not be less than initial_delay_ms");
        }
        ro.finish();
    }
    if (s.duplicate_window > s.retention) {
        obj.require("duplicate_window_s")
            .fail("must not be longer than retention_s (events are pruned after it)");
    }
    obj.finish();
    return s;
}

}  // namespace

std::string read_secret_source(const ConfigNode& node, const ConfigContext& ctx) {
    return read_key_source(node, ctx);
}

const EndpointConfig* Config::find_endpoint(std::string_view path) const {
    for (const auto& ep : endpoints) {
        if (ep.path == path) return &ep;
    }
    return nullptr;
}

std::chrono::milliseconds RetryPolicy::delay_after(int failed_attempts, double unit_random) const {
    const double base = static_cast<double>(initial_delay.count()) *
                        std::pow(2.0, std::max(0, failed_attempts - 1));
    const double capped = std::min(base, static_cast<double>(max_delay.count()));
    return std::chrono::milliseconds(static_cast<std::int64_t>(capped * (0.5 + 0.5 * unit_random)));
}

unsigned Config::effective_threads() const {
    if (threads != 0) return threads;
    return std::max(1u, std::thread::hardware_concurrency());
}

namespace {
// Reads `in` to its end into `out`; false as soon as it holds more than `limit` bytes (a path
// given by mistake: a log, a device such as /dev/zero).
bool read_at_most(std::ifstream& in, std::string& out, std::uint64_t limit) {
    char buf[4096];
    while (in.read(buf, sizeof buf) || in.gcount() > 0) {
        out.append(buf, static_cast<std::size_t>(in.gcount()));
        if (out.size() > limit) return false;
    }
    return true;
}
}  // namespace

Result<std::string> read_key_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return Error{"cannot read " + path.string() + ": " + std::strerror(errno)};
    std::string key;
    if (!read_at_most(in, key, max_key_file_bytes)) {
        return Error{path.string() + " is too large for a key"};
    }
    while (!key.empty() && (key.back() == '\n' || key.back() == '\r')) key.pop_back();
    if (key.empty()) return Error{path.string() + " holds an empty key"};
    return key;
}

Result<Config> parse_config(std::string_view text, const std::string& origin,
                            const std::filesystem::path& base_dir) {
    Config cfg;
    cfg.file = origin;
    ConfigContext ctx{base_dir, &cfg.warnings};
    try {
        const Json doc = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/true,
                                     /*ignore_comments=*/true);
        ConfigObject root(doc, "");
        if (auto n = root.get("listen")) {
            auto items = n->as_array();
            if (items.empty()) n->fail("needs at least one address");
            for (const auto& item : items) cfg.listen.push_back(parse_listen(item, ctx));
        } else {
            root.fail("missing required key \"listen\"");
        }
        if (auto n = root.get("threads")) cfg.threads = static_cast<unsigned>(n->as_uint(0, 256));
        if (auto n = root.get("limits")) cfg.limits = parse_limits(n->as_object());
        if (auto n = root.get("log")) cfg.log = parse_log(n->as_object());
        if (auto n = root.get("handlers")) cfg.handlers = parse_handlers(n->as_object(), ctx);
        auto eps = root.require("endpoints");
        auto items = eps.as_array();
        if (items.empty()) eps.fail("needs at least one endpoint");
        std::set<std::string> paths;
        for (const auto& item : items) {
            auto ep = parse_endpoint(item, cfg.handlers, ctx);
            if (!paths.insert(ep.path).second) {
                ConfigNode(item.json()["path"], item.path() + ".path")
                    .fail("duplicate path " + ep.path);
            }
            cfg.endpoints.push_back(std::move(ep));
        }
        if (auto n = root.get("spool")) {
            cfg.spool = parse_spool(n->as_object(), ctx);
        } else {
            cfg.spool.path = default_spool_path();
        }
        if (auto n = root.get("admin")) cfg.admin = parse_admin(n->as_object(), ctx);
        root.finish();
        for (const auto& h : cfg.handlers) {
            const bool used =
                std::any_of(cfg.endpoints.begin(), cfg.endpoints.end(), [&](const auto& ep) {
                    return std::any_of(ep.routes.begin(), ep.routes.end(), [&](const auto& r) {
                        return std::find(r.handlers.begin(), r.handlers.end(), h.name) !=
                               r.handlers.end();
                    });
                });
            if (!used) cfg.warnings.push_back("handlers." + h.name + ": not used by any route");
        }
    } catch (const ConfigError& e) {
        return Error{origin + ": " + e.what()};
    } catch (const Json::exception& e) {
        // A syntax error (parse_error), or a number too large for a double (out_of_range 406,
        // found by fuzz/config_fuzz.cpp: it used to escape and end the process, even on SIGHUP).
        // nlohmann prefixes "[json.exception.parse_error.101] "; the rest names line and column.
        std::string what = e.what();
        if (const auto pos = what.find("] "); pos != std::string::npos) what = what.substr(pos + 2);
        return Error{origin + ": not valid JSON: " + what};
    }
    return cfg;
}

Result<Config> load_config(const std::filesystem::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) return Error{file.string() + ": cannot read: " + std::strerror(errno)};
    std::string text;
    if (!read_at_most(in, text, max_config_file_bytes)) {
        return Error{file.string() + ": larger than 4 MiB; is it the config file?"};
    }
    auto base = file.parent_path();
    if (base.empty()) base = ".";
    return parse_config(text, file.string(), base);
}

}  // namespace sigsci
