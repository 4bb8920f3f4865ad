#pragma once
// Handler kinds. A new kind is one new source file with a parse function, plus one line in
// handler_registry.cpp: the parse function validates its own config keys and returns a factory.
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "sigsci/config_reader.hpp"
#include "sigsci/handler.hpp"

namespace sigsci {

struct ConfigContext {
    std::filesystem::path base_dir;  // relative paths in the config are resolved against it
    std::vector<std::string>* warnings = nullptr;
};

struct HandlerSpec {
    std::string name;
    std::string kind;
    std::string summary;  // one line for `check`
    // Builds a live handler; may throw std::runtime_error (a file that cannot be opened, say).
    std::function<HandlerPtr()> make;
};

// Reads the kind-specific keys of `cfg` (the caller has read "kind") and calls cfg.finish().
using HandlerParseFn = HandlerSpec (*)(const std::string& name, ConfigObject& cfg,
                                       const ConfigContext& ctx);

struct HandlerKind {
    std::string_view kind;
    HandlerParseFn parse;
};

std::span<const HandlerKind> handler_kinds();

// Per-kind parse functions, each defined in its handler's file.
HandlerSpec parse_log_handler(const std::string& name, ConfigObject& cfg, const ConfigContext& ctx);
HandlerSpec parse_file_handler(const std::string& name, ConfigObject& cfg,
                               const ConfigContext& ctx);
HandlerSpec parse_exec_handler(const std::string& name, ConfigObject& cfg,
                               const ConfigContext& ctx);
HandlerSpec parse_forward_handler(const std::string& name, ConfigObject& cfg,
                                  const ConfigContext& ctx);

// A secret from one of the signing-key sources: {"file"}, {"env"}, {"credential"}, {"value"}.
std::string read_secret_source(const ConfigNode& node, const ConfigContext& ctx);

}  // namespace sigsci
