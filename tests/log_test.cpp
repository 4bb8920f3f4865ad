#include "sigsci/log.hpp"

#include <gtest/gtest.h>

#include "sigsci/log_handler.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

const std::string ts = "2026-01-02T03:04:05.678Z";

TEST(Log, JsonLineHasTsLevelMsgThenFieldsInOrder) {
    const auto line = log::format_line(log::Format::json, ts, log::Level::warn, "request",
                                       log::Fields{{"status", 401}, {"endpoint", "/a"}});
    EXPECT_EQ(
        line,
        R"({"ts":"2026-01-02T03:04:05.678Z","level":"warn","msg":"request","status":401,"endpoint":"/a"})");
}

// A client controls `type` and the request path; neither may end the line or add a field.
TEST(Log, HostileValuesCannotBreakOrForgeJsonLines) {
    const std::string hostile = "flag\"}\n{\"level\":\"error\",\"msg\":\"forged\"\r\u2028\x01";
    const auto line = log::format_line(log::Format::json, ts, log::Level::info, "request",
                                       log::Fields{{"type", hostile}, {"path", "/a\nb"}});
    EXPECT_EQ(line.find('\n'), std::string::npos);
    EXPECT_EQ(line.find('\r'), std::string::npos);
    auto parsed = Json::parse(line);
    EXPECT_EQ(parsed["type"], hostile);
    EXPECT_EQ(parsed["level"], "info");
    EXPECT_EQ(parsed["msg"], "request");
    EXPECT_EQ(parsed.size(), 5u);
}

TEST(Log, InvalidUtf8IsReplacedNotThrown) {
    const std::string raw = "/a\xff\xfe";
    std::string line;
    ASSERT_NO_THROW(line = log::format_line(log::Format::json, ts, log::Level::info, "request",
                                            log::Fields{{"path", raw}}));
    EXPECT_TRUE(Json::accept(line));
}

TEST(Log, TextLineQuotesAnythingThatIsNotABareWord) {
    const auto line = log::format_line(
        log::Format::text, ts, log::Level::info, "request",
        log::Fields{{"status", 200}, {"endpoint", "/sigsci/prod"}, {"type", "a b\nstatus=500"}});
    EXPECT_EQ(line,
              "2026-01-02T03:04:05.678Z INFO request status=200 endpoint=/sigsci/prod type=\"a "
              "b\\nstatus=500\"");
}

TEST(Log, TextLineQuotesEmptyStringsAndEquals) {
    const auto line = log::format_line(log::Format::text, ts, log::Level::error, "x",
                                       log::Fields{{"a", ""}, {"b", "k=v"}});
    EXPECT_EQ(line, "2026-01-02T03:04:05.678Z ERROR x a=\"\" b=\"k=v\"");
}

TEST(Log, LevelFiltersRecordsAndCanChangeAtRuntime) {
    auto sink = std::make_shared<test::MemorySink>();
    log::configure(log::Format::json, log::Level::warn, sink);
    EXPECT_FALSE(log::enabled(log::Level::info));
    EXPECT_TRUE(log::enabled(log::Level::error));
    log::info("dropped");
    log::warn("kept");
    log::set_level(log::Level::debug);  // as a reload does
    EXPECT_TRUE(log::enabled(log::Level::debug));
    log::debug("kept too");
    log::set_level(log::Level::off);
    log::error("dropped too");
    const auto lines = sink->lines();
    log::configure(log::Format::json, log::Level::info);
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(Json::parse(lines[0])["msg"], "kept");
    EXPECT_EQ(Json::parse(lines[1])["msg"], "kept too");
}

TEST(Log, ParsesNamesFromConfig) {
    EXPECT_EQ(log::parse_level("warn"), log::Level::warn);
    EXPECT_FALSE(log::parse_level("verbose"));
    EXPECT_EQ(log::parse_format("text"), log::Format::text);
    EXPECT_FALSE(log::parse_format("JSON"));
}

TEST(LogHandler, SummaryKeepsScalarsAndCountsContainers) {
    const auto payload = Json::parse(
        R"({"source":"198.51.100.23","requestCount":131,"userAgents":["a","b"],"reasons":{"SQLI":1}})");
    EXPECT_EQ(
        summarize_payload(payload).dump(),
        R"({"source":"198.51.100.23","requestCount":131,"userAgents":"[2 items]","reasons":"{1 keys}"})");
    const std::string long_string(500, 'x');
    EXPECT_EQ(summarize_payload(Json{{"s", long_string}})["s"], std::string(200, 'x') + "...");
    EXPECT_TRUE(summarize_payload(Json()).is_null());
}

}  // namespace
}  // namespace sigsci
