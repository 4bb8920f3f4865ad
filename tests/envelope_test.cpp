#include "sigsci/envelope.hpp"

#include <gtest/gtest.h>

#include "sigsci/event.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

EventPtr event_of(const std::string& body) {
    auto env = parse_envelope(body);
    if (!env) throw std::runtime_error(env.error());
    return make_event("/hook", body, std::move(env).value(), std::chrono::system_clock::now());
}

std::string nested(int levels) {  // the envelope object plus levels - 1 arrays inside it
    return "{\"type\":\"flag\",\"payload\":" + std::string(levels - 1, '[') +
           std::string(levels - 1, ']') + "}";
}

TEST(Envelope, EverySampleParsesWithItsType) {
    for (const auto& type : test::sample_types()) {
        auto env = parse_envelope(test::sample(type));
        ASSERT_TRUE(env) << type << ": " << env.error();
        EXPECT_EQ(env.value().type, type);
        EXPECT_TRUE(env.value().created.has_value()) << type;
        EXPECT_FALSE(env.value().shadows_ours) << type;
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

TEST(Envelope, EveryByteIsValidatedNotOnlyTheFieldsRoutingReads) {
    // Broken JSON deep inside the payload, where routing never looks.
    EXPECT_EQ(parse_envelope(R"({"type":"flag","payload":{"a":[1,2,}]}})").error(),
              "body is not valid JSON");
    EXPECT_EQ(parse_envelope(R"({"type":"flag","payload":{"a":tru}})").error(),
              "body is not valid JSON");
    EXPECT_EQ(parse_envelope(R"({"type":"flag","payload":{"a":01}})").error(),
              "body is not valid JSON");
    // Invalid UTF-8 (a lone continuation byte, an overlong encoding) in a nested string.
    EXPECT_EQ(parse_envelope("{\"type\":\"flag\",\"payload\":{\"a\":\"\x80\"}}").error(),
              "body is not valid JSON");
    EXPECT_EQ(parse_envelope("{\"type\":\"flag\",\"payload\":\"\xc0\xaf\"}").error(),
              "body is not valid JSON");
    // A NUL byte ends the input for some parsers (nlohmann's); here it is just invalid, also
    // on the way that numbers beyond 64 bits take.
    EXPECT_EQ(parse_envelope(std::string("{\"type\":\"flag\"}\0trailing", 24)).error(),
              "body is not valid JSON");
    EXPECT_EQ(parse_envelope(
                  std::string("{\"type\":\"flag\",\"n\":123456789012345678901234567890}\0x", 52))
                  .error(),
              "body is not valid JSON");
    // A raw control character inside a string.
    EXPECT_EQ(parse_envelope("{\"type\":\"flag\",\"link\":\"a\nb\"}").error(),
              "body is not valid JSON");
}

TEST(Envelope, IntegersBeyond64BitsAreValidJson) {
    // RFC 8259 sets no limit; they are read as doubles, as nlohmann always read them here.
    const std::string big = "123456789012345678901234567890";
    auto env =
        parse_envelope(R"({"type":"flag","payload":{"n":)" + big + R"(},"created":"c","id":"x"})");
    ASSERT_TRUE(env) << env.error();
    EXPECT_EQ(env.value().type, "flag");
    EXPECT_EQ(env.value().created, "c");
    EXPECT_TRUE(env.value().shadows_ours);
    // The same rules as the fast way.
    EXPECT_EQ(parse_envelope(R"({"type":"flag","type":"x","n":)" + big + "}").error(),
              "envelope repeats a top-level field");
    EXPECT_EQ(parse_envelope(R"({"type":1,"n":)" + big + "}").error(),
              "envelope \"type\" is not a string");
    EXPECT_EQ(parse_envelope("[" + big + "]").error(), "body is not a JSON object");
    EXPECT_EQ(parse_envelope(R"({"type":"flag","n":)" + big).error(), "body is not valid JSON");
    std::string deep = nested(max_envelope_depth + 1);
    deep.insert(deep.size() - 1, ",\"n\":" + big);
    EXPECT_EQ(parse_envelope(deep).error(), "body is nested too deeply");
    std::string ok = nested(max_envelope_depth);
    ok.insert(ok.size() - 1, ",\"n\":" + big);
    EXPECT_TRUE(parse_envelope(ok)) << parse_envelope(ok).error();
    // A double out of range is no number either parser can hold.
    EXPECT_EQ(parse_envelope(R"({"type":"flag","n":1e400})").error(), "body is not valid JSON");
}

TEST(Envelope, RepeatedTopLevelFieldsAreRefused) {
    // Two "type"s: this receiver and a consumer of the archive could each believe another one.
    EXPECT_EQ(parse_envelope(R"({"type":"flag","type":"agentAlert"})").error(),
              "envelope repeats a top-level field");
    EXPECT_EQ(parse_envelope(R"({"type":"flag","payload":{},"link":"x","payload":1})").error(),
              "envelope repeats a top-level field");
    // Escapes are compared decoded: "typ\u0065" is "type".
    EXPECT_EQ(parse_envelope(R"({"type":"flag","typ\u0065":"x"})").error(),
              "envelope repeats a top-level field");
    // Inside the payload, names are the payload's business.
    EXPECT_TRUE(parse_envelope(R"({"type":"flag","payload":{"a":1,"a":2}})"));
}

TEST(Envelope, CreatedIsReadOnlyWhenItIsAString) {
    auto env = parse_envelope(R"({"type":"flag","created":"2025-01-01T00:00:00+02:00"})");
    ASSERT_TRUE(env);
    EXPECT_EQ(env.value().created, "2025-01-01T00:00:00+02:00");
    EXPECT_FALSE(parse_envelope(R"({"type":"flag","created":17})").value().created);
    EXPECT_FALSE(parse_envelope(R"({"type":"flag"})").value().created);
}

TEST(Envelope, OptionalFieldsMayBeMissingOrNull) {
    const auto event = event_of(R"({"type":"flag"})");
    EXPECT_TRUE(event->created().is_null());
    EXPECT_TRUE(event->payload().is_null());
    EXPECT_TRUE(event->link().is_null());
    EXPECT_TRUE(event_of(R"({"type":"flag","payload":null})")->payload().is_null());
}

TEST(Envelope, UnknownTypesAndExtraFieldsAreKept) {
    const auto event = event_of(
        R"({"created":"2025-01-01T00:00:00.123456789+02:00","type":"brandNewThing","workspaceId":"ws1","payload":{"Id":"x"}})");
    EXPECT_EQ(event->envelope.type, "brandNewThing");
    EXPECT_EQ(event->doc()["workspaceId"], "ws1");
    // `created` is carried exactly as given.
    EXPECT_EQ(event->created(), "2025-01-01T00:00:00.123456789+02:00");
}

TEST(Envelope, FieldOrderIsPreserved) {
    const auto event = event_of(R"({"type":"flag","zeta":1,"alpha":2,"created":"c"})");
    EXPECT_EQ(event->doc().dump(), R"({"type":"flag","zeta":1,"alpha":2,"created":"c"})");
}

TEST(Envelope, GoStyleEscapesDecode) {
    auto env = parse_envelope(R"({"type":"fl\u0061g","link":"https://x/?a=1\u0026b=2"})");
    ASSERT_TRUE(env);
    EXPECT_EQ(env.value().type, "flag");
    EXPECT_EQ(event_of(R"({"type":"flag","link":"https://x/?a=1\u0026b=2"})")->link(),
              "https://x/?a=1&b=2");
}

TEST(Envelope, NestingIsCappedCountingTheEnvelopeItself) {
    EXPECT_TRUE(parse_envelope(nested(max_envelope_depth)));
    EXPECT_EQ(parse_envelope(nested(max_envelope_depth + 1)).error(), "body is nested too deeply");
    EXPECT_EQ(parse_envelope(nested(100000)).error(), "body is nested too deeply");
}

TEST(Envelope, ArchiveLineIsOneLineWithOurFieldsFirstAndTheBodysOwnBytes) {
    // Pretty-printed, with an escape that a re-serialisation would have rewritten.
    const auto event = event_of(
        "{\n  \"type\": \"flag\",\n  \"workspaceId\": \"w\",\n  \"link\": \"a\\u0026b\",\n"
        "  \"payload\": { \"a\" : [1, 2.50, \"x y\"] }\n}\n");
    const auto line = archive_line(*event);
    EXPECT_EQ(line, R"({"id":")" + event->id + R"(","received_at":")" + event->received_at +
                        R"(","endpoint":"/hook","type":"flag","workspaceId":"w","link":"a\u0026b",)"
                        R"("payload":{"a":[1,2.50,"x y"]}})"
                        "\n");
    EXPECT_EQ(Json::parse(line), archive_record(*event));
}

TEST(Envelope, ArchiveLineUsesABodyWithoutLineBreaksAsItIs) {
    // Spaces between tokens do no harm on one line; only line breaks would.
    const auto event = event_of(" {\"type\": \"flag\", \"payload\": {\"a\": [1, 2]}}\t");
    EXPECT_EQ(archive_line(*event), R"({"id":")" + event->id + R"(","received_at":")" +
                                        event->received_at +
                                        R"(","endpoint":"/hook","type": "flag", "payload": )"
                                        "{\"a\": [1, 2]}}\t\n");
    EXPECT_EQ(Json::parse(archive_line(*event)), archive_record(*event));
}

TEST(Envelope, ArchiveLineOfEverySampleEqualsTheRecordTree) {
    for (const auto& type : test::sample_types()) {
        const auto event = event_of(test::sample(type));
        const auto line = archive_line(*event);
        ASSERT_EQ(line.find('\n'), line.size() - 1) << type;
        EXPECT_EQ(Json::parse(line), archive_record(*event)) << type;
    }
}

TEST(Envelope, ArchiveRecordPutsOurFieldsFirstAndKeepsTheRest) {
    const auto event =
        event_of(R"({"type":"flag","id":"spoofed","workspaceId":"w","payload":{"a":1}})");
    EXPECT_TRUE(event->envelope.shadows_ours);
    const auto record = archive_record(*event);
    const auto text = record.dump();
    EXPECT_EQ(text.find(R"({"id":")" + event->id + R"(","received_at":")"), 0u) << text;
    EXPECT_EQ(record["id"], event->id);  // ours wins over the envelope's
    EXPECT_EQ(record["endpoint"], "/hook");
    EXPECT_EQ(record["workspaceId"], "w");
    EXPECT_EQ(record["payload"]["a"], 1);
    // The line says the same, with the spoofed id gone.
    const auto line = archive_line(*event);
    EXPECT_EQ(Json::parse(line), record);
    EXPECT_EQ(line.find("spoofed"), std::string::npos);
}

}  // namespace
}  // namespace sigsci
