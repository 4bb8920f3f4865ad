// libFuzzer target: the X-SigSci-Signature decoder and the verifier. Input: header, NUL, body.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>
#include "fuzz_entry.hpp"

#include "sigsci/signature.hpp"

SIGSCI_FUZZ_TARGET(signature) {
    const std::string_view input(reinterpret_cast<const char*>(data), size);
    const auto nul = input.find('\0');
    const auto header = input.substr(0, nul);
    const auto body = nul == std::string_view::npos ? std::string_view() : input.substr(nul + 1);
    const auto decoded = sigsci::decode_signature(header);
    const std::vector<std::string> keys{"fuzz-key-one", "fuzz-key-two"};
    const auto check = sigsci::verify_signature(header, body, keys);
    // A decodable header that verifies must be the real HMAC under one of the keys.
    if (check == sigsci::SignatureCheck::ok) {
        if (!decoded) __builtin_trap();
        const auto one = sigsci::hmac_sha256(keys[0], body);
        const auto two = sigsci::hmac_sha256(keys[1], body);
        if (*decoded != one && *decoded != two) __builtin_trap();
    }
    return 0;
}
