#include "sigsci/envelope.hpp"

#include <gtest/gtest.h>

#include "sigsci/event.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

TEST(Envelope, EverySampleParsesWithItsType) {
    for (const auto& type : test::sample_types()) {
        auto env = parse_envelope(test::sample(type));
        ASSERT_TRUE(env) << type << ": " << env.error();
        EXPECT_EQ(env.value().type, type);
        EXPECT_TRUE(env.value().created().is_string()) << type;
    }
}

TEST(Envelope, RequiresAnObjectWithAStringType) {
    EXPECT_EQ(parse_envelope("[1,2]").error(), "body is not a JSON object");
    EXPECT_EQ(parse_envelope("\"flag\"").error(), "body is not a JSON object");
    EXPECT_EQ(parse_envelope("{\"payload\":{}}").error(), "envelope has no \"type\"");
    EXPECT_EQ(parse_envelope("{\"type\":7}").error(), "envelope \"type\" is not a string");
    EXPECT_EQ(parse_envelope("{\"type\":null}").error(), "envelope \"type\" is not a string");
    EXPECT_EQ(parse_envelope("{\"type\":\"flag\"").error(), "body is not valid JSON");
    EXPECT_EQ(parse_envelope("").error(), "body is not valid JSON");
    EXPECT_EQ(parse_envelope("{\"type\":\"flag\"} trailing").error(), "body is not valid JSON");
}

TEST(Envelope, OptionalFieldsMayBeMissingOrNull) {
    auto env = parse_envelope(R"({"type":"flag"})");
    ASSERT_TRUE(env);
    EXPECT_TRUE(env.value().created().is_null());
    EXPECT_TRUE(env.value().payload().is_null());
    EXPECT_TRUE(env.value().link().is_null());
    auto with_null = parse_envelope(R"({"type":"flag","payload":null})");
    ASSERT_TRUE(with_null);
    EXPECT_TRUE(with_null.value().payload().is_null());
}

TEST(Envelope, UnknownTypesAndExtraFieldsAreKept) {
    auto env = parse_envelope(
        R"({"created":"2025-01-01T00:00:00.123456789+02:00","type":"brandNewThing","workspaceId":"ws1","payload":{"Id":"x"}})");
    ASSERT_TRUE(env);
    EXPECT_EQ(env.value().type, "brandNewThing");
    EXPECT_EQ(env.value().doc["workspaceId"], "ws1");
    // `created` is carried exactly as given.
    EXPECT_EQ(env.value().created(), "2025-01-01T00:00:00.123456789+02:00");
}

TEST(Envelope, FieldOrderIsPreserved) {
    auto env = parse_envelope(R"({"type":"flag","zeta":1,"alpha":2,"created":"c"})");
    ASSERT_TRUE(env);
    EXPECT_EQ(env.value().doc.dump(), R"({"type":"flag","zeta":1,"alpha":2,"created":"c"})");
}

TEST(Envelope, GoStyleEscapesDecode) {
    auto env = parse_envelope(R"({"type":"flag","link":"https://x/?a=1\u0026b=2"})");
    ASSERT_TRUE(env);
    EXPECT_EQ(env.value().link(), "https://x/?a=1&b=2");
}

TEST(Envelope, DeepNestingIsRefusedNotRecursedInto) {
    const std::string deep = "{\"type\":\"flag\",\"payload\":" + std::string(100000, '[') +
                             std::string(100000, ']') + "}";
    EXPECT_EQ(parse_envelope(deep).error(), "body is nested too deeply");
    const std::string ok =
        "{\"type\":\"flag\",\"payload\":" + std::string(100, '[') + std::string(100, ']') + "}";
    EXPECT_TRUE(parse_envelope(ok));
}

TEST(Envelope, ArchiveRecordPutsOurFieldsFirstAndKeepsTheRest) {
    auto env =
        parse_envelope(R"({"type":"flag","id":"spoofed","workspaceId":"w","payload":{"a":1}})");
    ASSERT_TRUE(env);
    const auto event =
        make_event("/hook", "{}", std::move(env).value(), std::chrono::system_clock::now());
    const auto record = archive_record(*event);
    const auto text = record.dump();
    EXPECT_EQ(text.find(R"({"id":")" + event->id + R"(","received_at":")"), 0u) << text;
    EXPECT_EQ(record["id"], event->id);  // ours wins over the envelope's
    EXPECT_EQ(record["endpoint"], "/hook");
    EXPECT_EQ(record["workspaceId"], "w");
    EXPECT_EQ(record["payload"]["a"], 1);
}

}  // namespace
}  // namespace sigsci
