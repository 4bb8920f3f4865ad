#pragma once
// A strict walker over the parsed config file: every value is read through it, so every error
// names its key path (endpoints[0].routes[1].handlers[0]) and unknown keys are refused.
#include <cstdint>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "sigsci/envelope.hpp"

namespace sigsci {

// Thrown while reading a config; load_config() turns it into an error naming the file.
class ConfigError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

class ConfigObject;

class ConfigNode {
  public:
    ConfigNode(const Json& value, std::string path) : value_(&value), path_(std::move(path)) {}

    const std::string& path() const { return path_; }
    const Json& json() const { return *value_; }
    [[noreturn]] void fail(std::string_view problem) const;

    std::string as_string() const;
    std::string as_nonempty_string() const;
    std::uint64_t as_uint(std::uint64_t min, std::uint64_t max) const;
    bool as_bool() const;
    ConfigObject as_object() const;
    std::vector<ConfigNode> as_array() const;

  private:
    const Json* value_;
    std::string path_;
};

class ConfigObject {
  public:
    ConfigObject(const Json& value, std::string path);

    const std::string& path() const { return path_; }
    [[noreturn]] void fail(std::string_view problem) const;

    bool has(std::string_view key) const;
    std::optional<ConfigNode> get(std::string_view key);
    ConfigNode require(std::string_view key);
    std::vector<std::string> keys() const;

    // Throws for the first key that no get()/require() asked for.
    void finish() const;

  private:
    std::string child_path(std::string_view key) const;

    const Json* value_;
    std::string path_;
    std::set<std::string, std::less<>> seen_;
};

}  // namespace sigsci
