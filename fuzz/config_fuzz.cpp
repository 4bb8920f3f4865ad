// libFuzzer target: the config loader (JSON with comments, the strict walker, every handler
// kind's schema) on arbitrary text. Errors are expected; crashes and hangs are findings.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string_view>
#include "fuzz_entry.hpp"

#include "sigsci/config.hpp"
#include "sigsci/log.hpp"

SIGSCI_FUZZ_TARGET(config) {
    static const bool quiet = [] {
        sigsci::log::set_level(sigsci::log::Level::off);
        return true;
    }();
    (void)quiet;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    // Relative paths resolve against an empty directory of its own.
    static const auto base = [] {
        auto dir = std::filesystem::temp_directory_path() / "sigsci-config-fuzz";
        std::filesystem::create_directories(dir);
        return dir;
    }();
    auto config = sigsci::parse_config(text, "fuzz.json", base);
    if (config) (void)config.value().effective_threads();
    return 0;
}
