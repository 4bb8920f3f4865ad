#include "sigsci/config_reader.hpp"

#include <limits>

namespace sigsci {

namespace {
std::string located(const std::string& path, std::string_view problem) {
    return path.empty() ? std::string(problem) : path + ": " + std::string(problem);
}
}  // namespace

void ConfigNode::fail(std::string_view problem) const {
    throw ConfigError(located(path_, problem));
}

std::string ConfigNode::as_string() const {
    if (!value_->is_string()) fail("must be a string");
    return value_->get<std::string>();
}

std::string ConfigNode::as_nonempty_string() const {
    auto s = as_string();
    if (s.empty()) fail("must not be empty");
    return s;
}

std::uint64_t ConfigNode::as_uint(std::uint64_t min, std::uint64_t max) const {
    if (!value_->is_number_integer() ||
        (value_->is_number_integer() && !value_->is_number_unsigned() &&
         value_->get<std::int64_t>() < 0)) {
        fail("must be a whole number from " + std::to_string(min) + " to " + std::to_string(max));
    }
    const auto v = value_->get<std::uint64_t>();
    if (v < min || v > max) {
        fail("must be a whole number from " + std::to_string(min) + " to " + std::to_string(max));
    }
    return v;
}

bool ConfigNode::as_bool() const {
    if (!value_->is_boolean()) fail("must be true or false");
    return value_->get<bool>();
}

ConfigObject ConfigNode::as_object() const {
    return ConfigObject(*value_, path_);
}

std::vector<ConfigNode> ConfigNode::as_array() const {
    if (!value_->is_array()) fail("must be an array");
    std::vector<ConfigNode> out;
    out.reserve(value_->size());
    for (std::size_t i = 0; i < value_->size(); ++i) {
        out.emplace_back((*value_)[i], path_ + "[" + std::to_string(i) + "]");
    }
    return out;
}

ConfigObject::ConfigObject(const Json& value, std::string path)
    : value_(&value), path_(std::move(path)) {
    if (!value.is_object()) fail("must be an object");
}

void ConfigObject::fail(std::string_view problem) const {
    throw ConfigError(located(path_, problem));
}

std::string ConfigObject::child_path(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
}

bool ConfigObject::has(std::string_view key) const {
    return value_->contains(key);
}

std::optional<ConfigNode> ConfigObject::get(std::string_view key) {
    seen_.emplace(key);
    const auto it = value_->find(key);
    if (it == value_->end()) return std::nullopt;
    return ConfigNode(*it, child_path(key));
}

ConfigNode ConfigObject::require(std::string_view key) {
    auto node = get(key);
    if (!node) fail("missing required key \"" + std::string(key) + "\"");
    return *node;
}

std::vector<std::string> ConfigObject::keys() const {
    std::vector<std::string> out;
    for (const auto& item : value_->items()) out.push_back(item.key());
    return out;
}

void ConfigObject::finish() const {
    for (const auto& item : value_->items()) {
        if (!seen_.contains(item.key())) {
            throw ConfigError(located(child_path(item.key()), "unknown key"));
        }
    }
}

}  // namespace sigsci
