// libFuzzer target: the envelope parser on arbitrary (already verified) bodies.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include "fuzz_entry.hpp"

#include "sigsci/envelope.hpp"

SIGSCI_FUZZ_TARGET(envelope) {
    const std::string_view body(reinterpret_cast<const char*>(data), size);
    auto envelope = sigsci::parse_envelope(body);
    if (envelope) {
        // What handlers read from every accepted envelope.
        (void)envelope.value().created();
        (void)envelope.value().payload();
        (void)envelope.value().link();
        (void)envelope.value().doc.dump(-1, ' ', false, sigsci::Json::error_handler_t::replace);
    }
    return 0;
}
