// Replays every fuzz target over its seed inputs (made from the samples, as fuzz/run.sh seeds
// the corpora) and over every crashing input the fuzzers found (fuzz/regressions/TARGET/), in
// the normal and sanitizer builds: a fixed finding stays fixed.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>

#include "sigsci/signature.hpp"
#include "test_support.hpp"

int sigsci_fuzz_envelope(const std::uint8_t* data, std::size_t size);
int sigsci_fuzz_signature(const std::uint8_t* data, std::size_t size);
int sigsci_fuzz_config(const std::uint8_t* data, std::size_t size);
int sigsci_fuzz_request(const std::uint8_t* data, std::size_t size);

namespace sigsci {
namespace {

using Target = int (*)(const std::uint8_t*, std::size_t);

void feed(Target target, const std::string& input) {
    EXPECT_EQ(target(reinterpret_cast<const std::uint8_t*>(input.data()), input.size()), 0);
}

// Returns how many regression inputs there were.
std::size_t replay_regressions(Target target, const std::string& name) {
    std::size_t n = 0;
    const auto dir = std::filesystem::path(SIGSCI_SOURCE_DIR) / "fuzz" / "regressions" / name;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
        if (entry.path().filename() == "README") continue;
        SCOPED_TRACE(entry.path().string());
        feed(target, test::read_file(entry.path()));
        ++n;
    }
    return n;
}

std::string raw_request(const std::string& path, const std::string& body,
                        const std::string& signature) {
    return "POST " + path + " HTTP/1.1\r\nHost: x\r\nX-SigSci-Signature: " + signature +
           "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

TEST(FuzzReplay, Envelope) {
    for (const auto& type : test::sample_types()) feed(&sigsci_fuzz_envelope, test::sample(type));
    feed(&sigsci_fuzz_envelope, "");
    feed(&sigsci_fuzz_envelope, std::string(200, '['));
    replay_regressions(&sigsci_fuzz_envelope, "envelope");
}

TEST(FuzzReplay, Signature) {
    for (const auto& type : test::sample_types()) {
        const auto body = test::sample(type);
        feed(&sigsci_fuzz_signature, to_hex(hmac_sha256("fuzz-key-one", body)) + '\0' + body);
    }
    feed(&sigsci_fuzz_signature, "");
    replay_regressions(&sigsci_fuzz_signature, "signature");
}

TEST(FuzzReplay, Config) {
    for (const char* name : {"example.json", "sigsci-webhookd.json"}) {
        feed(&sigsci_fuzz_config,
             test::read_file(std::filesystem::path(SIGSCI_SOURCE_DIR) / "config" / name));
    }
    replay_regressions(&sigsci_fuzz_config, "config");
}

TEST(FuzzReplay, Request) {
    std::string pipelined;
    for (const auto& type : test::sample_types()) {
        pipelined += raw_request("/hook", test::sample(type), "fuzz");
        feed(&sigsci_fuzz_request, raw_request("/windowed", test::sample(type), "fuzz"));
    }
    feed(&sigsci_fuzz_request, pipelined);
    feed(&sigsci_fuzz_request, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    feed(&sigsci_fuzz_request,
         "POST /hook HTTP/1.1\r\nHost: x\r\nX-SigSci-Signature: fuzz\r\nTransfer-Encoding: "
         "chunked\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n");
    replay_regressions(&sigsci_fuzz_request, "request");
}

}  // namespace
}  // namespace sigsci
