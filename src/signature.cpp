#include "sigsci/signature.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <stdexcept>

namespace sigsci {

Digest hmac_sha256(std::string_view key, std::string_view data) {
    Digest out{};
    unsigned int out_len = 0;
    // HMAC() wants non-null pointers even for empty input, hence the fallbacks.
    static const unsigned char empty = 0;
    const auto* key_ptr = key.empty() ? &empty : reinterpret_cast<const unsigned char*>(key.data());
    const auto* data_ptr =
        data.empty() ? &empty : reinterpret_cast<const unsigned char*>(data.data());
    if (HMAC(EVP_sha256(), key_ptr, static_cast<int>(key.size()), data_ptr, data.size(), out.data(),
             &out_len) == nullptr ||
        out_len != out.size()) {
        throw std::runtime_error("HMAC-SHA256 failed inside OpenSSL");
    }
    return out;
}

std::string to_hex(const Digest& digest) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string hex(digest.size() * 2, '\0');
    for (std::size_t i = 0; i < digest.size(); ++i) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 0x0f];
    }
    return hex;
}

namespace {
int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}
}  // namespace

std::optional<Digest> decode_signature(std::string_view header) {
    Digest out{};
    if (header.size() != out.size() * 2) return std::nullopt;
    for (std::size_t i = 0; i < out.size(); ++i) {
        const int hi = hex_value(header[2 * i]);
        const int lo = hex_value(header[2 * i + 1]);
        if (hi < 0 || lo < 0) return std::nullopt;
        out[i] = static_cast<unsigned char>((hi << 4) | lo);
    }
    return out;
}

SignatureCheck verify_signature(std::string_view header, std::string_view body,
                                std::span<const std::string> keys) {
    if (header.empty()) return SignatureCheck::missing;
    const auto presented = decode_signature(header);
    if (!presented) return SignatureCheck::malformed;
    // Every key is tried so the time taken does not depend on which key matched.
    bool matched = false;
    for (const auto& key : keys) {
        const Digest expected = hmac_sha256(key, body);
        matched |= CRYPTO_memcmp(expected.data(), presented->data(), expected.size()) == 0;
    }
    return matched ? SignatureCheck::ok : SignatureCheck::mismatch;
}

std::string_view to_string(SignatureCheck check) {
    switch (check) {
        case SignatureCheck::ok:
            return "ok";
        case SignatureCheck::missing:
            return "signature missing";
        case SignatureCheck::malformed:
            return "signature malformed";
        case SignatureCheck::mismatch:
            return "signature mismatch";
    }
    return "unknown";
}

}  // namespace sigsci
