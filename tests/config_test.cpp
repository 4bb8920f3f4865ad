#include <gtest/gtest.h>
#include "sigsci/config.hpp"
TEST(Config, Placeholder) { EXPECT_FALSE(sigsci::parse_config("{", "x", ".").ok()); }
