#include "sigsci/signature.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>

#include "sigsci/config.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

std::string bytes(std::size_t n, unsigned char b) {
    return std::string(n, static_cast<char>(b));
}

struct KnownAnswer {
    std::string key;
    std::string data;
    std::string hex;
};

// RFC 4231, section 4: HMAC-SHA-256 test cases 1-4, 6 and 7 (case 5 truncates the output).
TEST(Signature, MatchesRfc4231Vectors) {
    std::string key4;
    for (unsigned char c = 1; c <= 25; ++c) key4 += static_cast<char>(c);
    const std::vector<KnownAnswer> cases = {
        {bytes(20, 0x0b), "Hi There",
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
        {"Jefe", "what do ya want for nothing?",
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
        {bytes(20, 0xaa), bytes(50, 0xdd),
         "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
        {key4, bytes(50, 0xcd), "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
        {bytes(131, 0xaa), "Test Using Larger Than Block-Size Key - Hash Key First",
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
        {bytes(131, 0xaa),
         "This is a test using a larger than block-size key and a larger than block-size data. The "
         "key needs to be hashed before being used by the HMAC algorithm.",
         "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
    };
    for (const auto& c : cases) EXPECT_EQ(to_hex(hmac_sha256(c.key, c.data)), c.hex) << c.data;
}

TEST(Signature, EmptyBodyHasKnownDigest) {
    // Python: hmac.new(b"key", b"", hashlib.sha256).hexdigest()
    EXPECT_EQ(to_hex(hmac_sha256("key", "")),
              "5d5d139563c95b5967b9bd9a8c9b233a9dedb45072794cd232dc1b74832607d0");
}

// Every sample body, against digests computed by `openssl dgst -sha256 -hmac` (see the file).
TEST(Signature, MatchesOpensslForEverySample) {
    const std::string key = read_key_file(test::data_dir() / "test.key").value();
    std::istringstream in(test::read_file(test::data_dir() / "sample_signatures.txt"));
    int checked = 0;
    for (std::string line; std::getline(in, line);) {
        if (line.empty() || line[0] == '#') continue;
        std::istringstream fields(line);
        std::string type, hex;
        fields >> type >> hex;
        const auto body = test::sample(type);
        EXPECT_EQ(to_hex(hmac_sha256(key, body)), hex) << type;
        const std::string keys[] = {key};
        EXPECT_EQ(verify_signature(hex, body, keys), SignatureCheck::ok) << type;
        ++checked;
    }
    EXPECT_EQ(checked, static_cast<int>(test::sample_types().size()));
}

TEST(Signature, DecodeAcceptsEitherCase) {
    const auto lower =
        decode_signature("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    const auto upper =
        decode_signature("B0344C61D8DB38535CA8AFCEAF0BF12B881DC200C9833DA726E9376C2E32CFF7");
    ASSERT_TRUE(lower);
    ASSERT_TRUE(upper);
    EXPECT_EQ(*lower, *upper);
    EXPECT_EQ(to_hex(*lower), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
}

TEST(Signature, DecodeRejectsWrongLengthAndNonHex) {
    const std::string good(64, 'a');
    EXPECT_TRUE(decode_signature(good));
    EXPECT_FALSE(decode_signature(good.substr(0, 63)));
    EXPECT_FALSE(decode_signature(good + "a"));
    EXPECT_FALSE(decode_signature(""));
    EXPECT_FALSE(decode_signature(std::string(63, 'a') + "g"));
    EXPECT_FALSE(decode_signature("sha256=" + std::string(57, 'a')));
    EXPECT_FALSE(decode_signature(std::string(62, 'a') + " a"));
    EXPECT_FALSE(decode_signature(std::string(63, 'a') + '\0'));
}

TEST(Signature, VerifyNamesEachFailure) {
    const std::string keys[] = {"k1"};
    const auto good = to_hex(hmac_sha256("k1", "body"));
    EXPECT_EQ(verify_signature(good, "body", keys), SignatureCheck::ok);
    EXPECT_EQ(verify_signature("", "body", keys), SignatureCheck::missing);
    EXPECT_EQ(verify_signature("xyz", "body", keys), SignatureCheck::malformed);
    EXPECT_EQ(verify_signature(good, "body!", keys), SignatureCheck::mismatch);
    EXPECT_EQ(verify_signature(to_hex(hmac_sha256("k2", "body")), "body", keys),
              SignatureCheck::mismatch);
}

TEST(Signature, AnyKeyOfTheListVerifies) {
    const std::string keys[] = {"old-key", "new-key"};
    EXPECT_EQ(verify_signature(to_hex(hmac_sha256("old-key", "b")), "b", keys), SignatureCheck::ok);
    EXPECT_EQ(verify_signature(to_hex(hmac_sha256("new-key", "b")), "b", keys), SignatureCheck::ok);
    EXPECT_EQ(verify_signature(to_hex(hmac_sha256("other", "b")), "b", keys),
              SignatureCheck::mismatch);
}

TEST(Signature, KeyIsUsedAsStringBytesNotHexDecoded) {
    // The dashboard shows a hex-looking key; Signal Sciences keys HMAC with its characters.
    const std::string key = "0123456789abcdef";
    const std::string decoded = "\x01\x23\x45\x67\x89\xab\xcd\xef";
    const std::string keys[] = {key};
    EXPECT_EQ(verify_signature(to_hex(hmac_sha256(key, "b")), "b", keys), SignatureCheck::ok);
    EXPECT_EQ(verify_signature(to_hex(hmac_sha256(decoded, "b")), "b", keys),
              SignatureCheck::mismatch);
}

}  // namespace
}  // namespace sigsci
