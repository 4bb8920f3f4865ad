#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "sigsci/config.hpp"

namespace sigsci {

// Every route whose types hold `type` or "*" contributes its handlers, each at most once, in the
// order they first appear. An empty result means the event is unrouted.
std::vector<std::string> route_handlers(const EndpointConfig& endpoint, std::string_view type);

}  // namespace sigsci
