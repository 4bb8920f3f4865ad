#include "sigsci/forward.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <ctime>

namespace sigsci {

namespace {

bool is_ip(const std::string& host, int family) {
    unsigned char buf[16];
    return inet_pton(family, host.c_str(), buf) == 1;
}

bool is_ipv6(const std::string& host) {
    return is_ip(host, AF_INET6);
}

// One piece of a template string: literal text, or a pointer to substitute.
struct Piece {
    bool placeholder = false;
    std::string text;  // the literal, or the pointer ("" for "{/}": the whole envelope)
};

// Splits a template string; an error says what is wrong with it.
Result<std::vector<Piece>> split(std::string_view s) {
    std::vector<Piece> out;
    std::string literal;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '{' && i + 1 < s.size() && s[i + 1] == '{') {
            literal += '{';
            ++i;
        } else if (s[i] == '{' && i + 1 < s.size() && s[i + 1] == '/') {
            const auto close = s.find('}', i);
            if (close == std::string_view::npos)
                return Error{"unterminated placeholder \"" + std::string(s.substr(i)) + "\""};
            std::string pointer(s.substr(i + 1, close - i - 1));
            if (pointer == "/") pointer.clear();
            try {
                Json::json_pointer check(pointer);
            } catch (const Json::exception&) {
                return Error{"\"{" + std::string(s.substr(i + 1, close - i - 1)) +
                             "}\" is not a valid JSON pointer"};
            }
            if (!literal.empty()) out.push_back({false, std::move(literal)});
            literal.clear();
            out.push_back({true, std::move(pointer)});
            i = close;
        } else {
            literal += s[i];
        }
    }
    if (!literal.empty()) out.push_back({false, std::move(literal)});
    return out;
}

Result<Json> expand(const Json& node, const Json& envelope, const std::string& where) {
    if (node.is_string()) {
        auto pieces = split(node.get_ref<const std::string&>());
        if (!pieces) return Error{pieces.error()};
        auto lookup = [&](const std::string& pointer) -> const Json* {
            try {
                const Json::json_pointer ptr(pointer);
                return envelope.contains(ptr) ? &envelope.at(ptr) : nullptr;
            } catch (const Json::exception&) {  // "/list/x": not an index of that array
                return nullptr;
            }
        };
        const auto& ps = pieces.value();
        if (ps.size() == 1 && ps[0].placeholder) {
            const Json* v = lookup(ps[0].text);
            if (!v) return Error{(ps[0].text.empty() ? "/" : ps[0].text) + " is not in the event"};
            return *v;
        }
        std::string text;
        for (const auto& p : ps) {
            if (!p.placeholder) {
                text += p.text;
                continue;
            }
            const Json* v = lookup(p.text);
            if (!v) return Error{(p.text.empty() ? "/" : p.text) + " is not in the event"};
            text += v->is_string() ? v->get_ref<const std::string&>()
                                   : v->dump(-1, ' ', false, Json::error_handler_t::replace);
        }
        return Json(std::move(text));
    }
    if (node.is_object()) {
        Json out = Json::object();
        for (const auto& [key, value] : node.items()) {
            auto v = expand(value, envelope, where + "/" + key);
            if (!v) return v;
            out[key] = std::move(v).value();
        }
        return out;
    }
    if (node.is_array()) {
        Json out = Json::array();
        for (std::size_t i = 0; i < node.size(); ++i) {
            auto v = expand(node[i], envelope, where + "/" + std::to_string(i));
            if (!v) return v;
            out.push_back(std::move(v).value());
        }
        return out;
    }
    return node;
}

// Where in the template a bad placeholder is, as a JSON pointer.
std::optional<std::string> first_error(const Json& node, const std::string& where) {
    if (node.is_string()) {
        auto pieces = split(node.get_ref<const std::string&>());
        if (!pieces) return (where.empty() ? "/" : where) + ": " + pieces.error();
        return std::nullopt;
    }
    if (node.is_object()) {
        for (const auto& [key, value] : node.items()) {
            if (auto e = first_error(value, where + "/" + key)) return e;
        }
    }
    if (node.is_array()) {
        for (std::size_t i = 0; i < node.size(); ++i) {
            if (auto e = first_error(node[i], where + "/" + std::to_string(i))) return e;
        }
    }
    return std::nullopt;
}

}  // namespace

std::string Url::origin() const {
    const auto h = is_ipv6(host) ? "[" + host + "]" : host;
    return std::string(tls ? "https://" : "http://") + h + ":" + std::to_string(port);
}

std::string Url::host_header() const {
    const auto h = is_ipv6(host) ? "[" + host + "]" : host;
    return port == (tls ? 443 : 80) ? h : h + ":" + std::to_string(port);
}

Result<Url> parse_url(std::string_view text) {
    Url u;
    std::string_view rest;
    if (text.starts_with("https://")) {
        u.tls = true;
        rest = text.substr(8);
    } else if (text.starts_with("http://")) {
        rest = text.substr(7);
    } else {
        return Error{"must start with https:// or http://"};
    }
    if (text.find('#') != std::string_view::npos) return Error{"must not have a #fragment"};
    for (const char c : text) {
        if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f)
            return Error{"must not contain spaces or control characters"};
    }
    const auto slash = rest.find_first_of("/?");
    std::string_view authority = rest.substr(0, slash);
    u.target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
    if (u.target.front() == '?') u.target = "/" + u.target;
    if (authority.find('@') != std::string_view::npos)
        return Error{"must not carry user info (put credentials in \"headers\")"};
    std::string_view port_text;
    if (authority.starts_with("[")) {
        const auto close = authority.find(']');
        if (close == std::string_view::npos) return Error{"has an unterminated [IPv6] host"};
        u.host = std::string(authority.substr(1, close - 1));
        if (!is_ipv6(u.host)) return Error{"\"" + u.host + "\" is not an IPv6 address"};
        const auto after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') return Error{"has something after the ] of its host"};
            port_text = after.substr(1);
        }
    } else {
        const auto colon = authority.rfind(':');
        u.host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
        const bool valid_name =
            !u.host.empty() && std::all_of(u.host.begin(), u.host.end(), [](char c) {
                return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' ||
                       c == '_';
            });
        if (!valid_name) return Error{"has no valid host"};
    }
    u.ip_literal = is_ipv6(u.host) || is_ip(u.host, AF_INET);
    u.port = u.tls ? 443 : 80;
    if (!port_text.empty() || authority.ends_with(":")) {
        if (port_text.empty() || port_text.size() > 5 ||
            !std::all_of(port_text.begin(), port_text.end(),
                         [](char c) { return c >= '0' && c <= '9'; }))
            return Error{"has an invalid port"};
        const auto p = std::stoul(std::string(port_text));
        if (p == 0 || p > 65535) return Error{"has an invalid port"};
        u.port = static_cast<std::uint16_t>(p);
    }
    return u;
}

Result<BodyTemplate> BodyTemplate::compile(Json spec) {
    if (auto e = first_error(spec, "")) return Error{*e};
    return BodyTemplate(std::move(spec));
}

Result<std::string> BodyTemplate::render(const Json& envelope) const {
    auto v = expand(spec_, envelope, "");
    if (!v) return Error{v.error()};
    return v.value().dump(-1, ' ', false, Json::error_handler_t::replace);
}

ForwardVerdict classify_response(int status, std::string_view retry_after,
                                 std::chrono::system_clock::time_point now) {
    using Kind = ForwardVerdict::Kind;
    if (status >= 200 && status <= 299) return {Kind::delivered, {}};
    if (status != 408 && status != 429 && (status < 500 || status > 599)) return {Kind::dead, {}};
    ForwardVerdict v{Kind::retry, {}};
    if (retry_after.empty()) return v;
    if (std::all_of(retry_after.begin(), retry_after.end(),
                    [](char c) { return c >= '0' && c <= '9'; }) &&
        retry_after.size() <= 9) {
        v.retry_after = std::chrono::seconds(std::stol(std::string(retry_after)));
        return v;
    }
    // An HTTP date (IMF-fixdate): "Sun, 06 Nov 1994 08:49:37 GMT".
    std::tm tm{};
    const std::string text(retry_after);
    const char* end = strptime(text.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end != nullptr && *end == '\0') {
        const auto at = std::chrono::system_clock::from_time_t(timegm(&tm));
        if (at > now)
            v.retry_after = std::chrono::duration_cast<std::chrono::milliseconds>(at - now);
    }
    return v;
}

}  // namespace sigsci
