#include "sigsci/router.hpp"

#include <algorithm>

namespace sigsci {

std::vector<std::string> route_handlers(const EndpointConfig& endpoint, std::string_view type) {
    std::vector<std::string> out;
    for (const auto& route : endpoint.routes) {
        const bool matches =
            std::any_of(route.types.begin(), route.types.end(),
                        [&](const std::string& t) { return t == "*" || t == type; });
        if (!matches) continue;
        for (const auto& name : route.handlers) {
            if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
        }
    }
    return out;
}

}  // namespace sigsci
