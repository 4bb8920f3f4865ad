#pragma once
// The forward handler's pure parts: the destination URL, the body template, and what an HTTP
// answer means for the delivery. No sockets here; forward_handler.cpp does the I/O.
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "sigsci/envelope.hpp"
#include "sigsci/result.hpp"

namespace sigsci {

struct Url {
    bool tls = false;         // https
    std::string host;         // a DNS name or an IP literal (IPv6 without brackets)
    bool ip_literal = false;  // verified as an IP address, and sent no SNI
    std::uint16_t port = 0;
    std::string target;  // path and query, at least "/"

    // "https://host:port": what logs show. The path is left out: chat webhook URLs carry their
    // secret there.
    std::string origin() const;
    // The Host header: the port only when it is not the scheme's default.
    std::string host_header() const;
};

// http:// or https:// URLs; no user info, no fragment.
Result<Url> parse_url(std::string_view text);

// A JSON body built from the envelope. Any string in the template may contain placeholders
// "{/json/pointer}" (RFC 6901); "{/}" is the whole envelope. A string that is exactly one
// placeholder becomes the value itself (object, number, ...); inside longer text, strings are
// inserted as they are and other values as compact JSON. "{{" is a literal "{". Object keys are
// literal. Nothing else is interpreted: a template cannot run anything.
class BodyTemplate {
  public:
    // Checks every placeholder; the error names the template location, e.g. "/text: ...".
    static Result<BodyTemplate> compile(Json spec);

    // The JSON text to send; fails naming a pointer that is not in the envelope.
    Result<std::string> render(const Json& envelope) const;

  private:
    explicit BodyTemplate(Json spec) : spec_(std::move(spec)) {}
    Json spec_;
};

// What a destination's answer means for the delivery.
struct ForwardVerdict {
    enum class Kind { delivered, retry, dead };
    Kind kind = Kind::delivered;
    std::chrono::milliseconds retry_after{0};  // from Retry-After, for retry
};

// 2xx delivered; 408, 429 and 5xx retried (honouring Retry-After: seconds or an HTTP date);
// anything else (3xx: redirects are not followed; other 4xx) dead at once.
ForwardVerdict classify_response(int status, std::string_view retry_after,
                                 std::chrono::system_clock::time_point now);

}  // namespace sigsci
