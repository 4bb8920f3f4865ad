#include "sigsci/signature.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <stdexcept>
#include <utility>
#include <vector>

namespace sigsci {

namespace {

// HMAC-SHA256 contexts already keyed, one per signing key and thread. Keying hashes the padded
// key, and a one-shot HMAC() also looks the algorithm up by name each time; both cost more than
// hashing a typical body. EVP_MAC_init with no key restarts a context with the key it has.
class KeyedMacs {
  public:
    ~KeyedMacs() { clear(); }

    EVP_MAC_CTX* get(std::string_view key) {
        for (auto& [k, ctx] : entries_) {
            if (k == key) return ctx;
        }
        if (entries_.size() >= max_keys) clear();  // keys were reloaded many times: start over
        static EVP_MAC* const hmac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
        if (hmac == nullptr) return nullptr;
        EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(hmac);
        if (ctx == nullptr) return nullptr;
        char digest[] = "SHA256";
        const OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
            OSSL_PARAM_construct_end()};
        // HMAC wants a non-null key pointer even for an empty key.
        static const unsigned char empty = 0;
        const auto* key_ptr =
            key.empty() ? &empty : reinterpret_cast<const unsigned char*>(key.data());
        if (EVP_MAC_init(ctx, key_ptr, key.size(), params) != 1) {
            EVP_MAC_CTX_free(ctx);
            return nullptr;
        }
        entries_.emplace_back(std::string(key), ctx);
        return ctx;
    }

  private:
    static constexpr std::size_t max_keys = 32;

    void clear() {
        for (auto& [k, ctx] : entries_) {
            OPENSSL_cleanse(k.data(), k.size());
            EVP_MAC_CTX_free(ctx);
        }
        entries_.clear();
    }

    std::vector<std::pair<std::string, EVP_MAC_CTX*>> entries_;
};

}  // namespace

Digest hmac_sha256(std::string_view key, std::string_view data) {
    thread_local KeyedMacs macs;
    Digest out{};
    std::size_t out_len = 0;
    EVP_MAC_CTX* ctx = macs.get(key);
    if (ctx == nullptr || EVP_MAC_init(ctx, nullptr, 0, nullptr) != 1 ||
        (!data.empty() && EVP_MAC_update(ctx, reinterpret_cast<const unsigned char*>(data.data()),
                                         data.size()) != 1) ||
        EVP_MAC_final(ctx, out.data(), &out_len, out.size()) != 1 || out_len != out.size()) {
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

SignatureCheck signature_form(std::string_view header) {
    if (header.empty()) return SignatureCheck::missing;
    return decode_signature(header) ? SignatureCheck::ok : SignatureCheck::malformed;
}

SignatureCheck verify_signature(std::string_view header, std::string_view body,
                                std::span<const std::string> keys) {
    const auto presented = decode_signature(header);
    if (!presented) return signature_form(header);
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
