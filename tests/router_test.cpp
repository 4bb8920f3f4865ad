#include "sigsci/router.hpp"

#include <gtest/gtest.h>

namespace sigsci {
namespace {

EndpointConfig endpoint_with(std::vector<RouteConfig> routes) {
    EndpointConfig ep;
    ep.path = "/x";
    ep.routes = std::move(routes);
    return ep;
}

using Names = std::vector<std::string>;

TEST(Router, ExactTypeAndWildcardBothContribute) {
    const auto ep =
        endpoint_with({{{"flag", "expireFlag"}, {"block"}}, {{"*"}, {"audit", "archive"}}});
    EXPECT_EQ(route_handlers(ep, "flag"), (Names{"block", "audit", "archive"}));
    EXPECT_EQ(route_handlers(ep, "expireFlag"), (Names{"block", "audit", "archive"}));
    EXPECT_EQ(route_handlers(ep, "listCreated"), (Names{"audit", "archive"}));
}

TEST(Router, EachHandlerRunsAtMostOncePerEvent) {
    const auto ep =
        endpoint_with({{{"flag"}, {"audit", "audit"}}, {{"*", "flag"}, {"audit", "archive"}}});
    EXPECT_EQ(route_handlers(ep, "flag"), (Names{"audit", "archive"}));
}

TEST(Router, UnknownTypeGoesOnlyToWildcards) {
    const auto ep = endpoint_with({{{"flag"}, {"block"}}});
    EXPECT_TRUE(route_handlers(ep, "somethingNew").empty());
    EXPECT_TRUE(route_handlers(endpoint_with({}), "flag").empty());
}

TEST(Router, TypeMatchIsExactAndCaseSensitive) {
    const auto ep = endpoint_with({{{"flag"}, {"block"}}});
    EXPECT_TRUE(route_handlers(ep, "Flag").empty());
    EXPECT_TRUE(route_handlers(ep, "fla").empty());
    EXPECT_TRUE(route_handlers(ep, "*").empty());
}

}  // namespace
}  // namespace sigsci
