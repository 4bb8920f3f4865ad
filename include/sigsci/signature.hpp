#pragma once
// X-SigSci-Signature: lowercase hex HMAC-SHA256 of the raw body, keyed with the signing key's
// bytes.
#include <array>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace sigsci {

using Digest = std::array<unsigned char, 32>;

Digest hmac_sha256(std::string_view key, std::string_view data);

std::string to_hex(const Digest& digest);

// Accepts exactly 64 hex digits in either case; anything else is no signature at all.
std::optional<Digest> decode_signature(std::string_view header);

enum class SignatureCheck { ok, missing, malformed, mismatch };

// What the header alone says: missing, malformed (not 64 hex digits), or ok (a digest that the
// body's HMAC may match).
SignatureCheck signature_form(std::string_view header);

// Checks `header` against every key in constant time per comparison; any key verifies (rotation).
SignatureCheck verify_signature(std::string_view header, std::string_view body,
                                std::span<const std::string> keys);

std::string_view to_string(SignatureCheck check);

}  // namespace sigsci
