#include "sigsci/handler_registry.hpp"

#include <array>

namespace sigsci {

std::span<const HandlerKind> handler_kinds() {
    static constexpr std::array kinds{
        HandlerKind{"log", &parse_log_handler},
        HandlerKind{"file", &parse_file_handler},
        HandlerKind{"exec", &parse_exec_handler},
        HandlerKind{"forward", &parse_forward_handler},
    };
    return kinds;
}

}  // namespace sigsci
