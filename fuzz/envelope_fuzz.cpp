// libFuzzer target: the envelope validator on arbitrary (already verified) bodies, checked
// against a second, independent JSON parser (nlohmann's): what the validator accepts, the tree
// parser must accept with the same type, and the archive line must say what the tree says.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include "fuzz_entry.hpp"

#include "sigsci/event.hpp"

SIGSCI_FUZZ_TARGET(envelope) {
    const std::string_view body(reinterpret_cast<const char*>(data), size);
    auto envelope = sigsci::parse_envelope(body);
    const auto tree = sigsci::envelope_tree(body);
    if (!envelope) {
        // Refusals of valid JSON are only for the envelope's own rules. (nlohmann stops at a
        // NUL byte and accepts what came before it; JSON never holds a raw NUL.)
        const bool has_nul = body.find('\0') != std::string_view::npos;
        if (!tree.is_discarded() && !has_nul && envelope.error() == "body is not valid JSON")
            std::abort();
        return 0;
    }
    if (tree.is_discarded() || !tree.is_object()) std::abort();
    if (tree.value("type", std::string("\x01")) != envelope.value().type) std::abort();
    const auto event = sigsci::make_event("/f", std::string(body), std::move(envelope).value(),
                                          std::chrono::system_clock::now());
    const auto line = sigsci::archive_line(*event);
    if (line.find('\n') != line.size() - 1) std::abort();
    if (sigsci::Json::parse(line, nullptr, false) != sigsci::archive_record(*event)) std::abort();
    (void)event->created();
    (void)event->payload();
    (void)event->link();
    return 0;
}
