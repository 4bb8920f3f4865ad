#include "sigsci/tls.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <boost/asio/ssl/context.hpp>

#include <stdexcept>
#include <string>

namespace sigsci {

namespace {

// TLS 1.2 suites: ECDHE key exchange and AEAD only (TLS 1.3 suites are all of that already).
constexpr const char* tls12_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

[[noreturn]] void fail(const std::string& what) {
    std::string detail;
    if (const unsigned long e = ERR_get_error(); e != 0) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        detail = std::string(": ") + buf;
    }
    ERR_clear_error();
    throw std::runtime_error(what + detail);
}

}  // namespace

std::shared_ptr<boost::asio::ssl::context> make_server_tls(const std::filesystem::path& cert,
                                                           const std::filesystem::path& key) {
    namespace ssl = boost::asio::ssl;
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
    SSL_CTX* native = ctx->native_handle();
    SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
    SSL_CTX_set_options(
        native, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_set_cipher_list(native, tls12_ciphers) != 1) fail("cannot set the cipher list");
    if (SSL_CTX_use_certificate_chain_file(native, cert.c_str()) != 1)
        fail("cannot load certificate chain " + cert.string());
    if (SSL_CTX_use_PrivateKey_file(native, key.c_str(), SSL_FILETYPE_PEM) != 1) {
        if (ERR_GET_REASON(ERR_peek_error()) == X509_R_KEY_VALUES_MISMATCH)
            fail("private key " + key.string() + " does not match certificate " + cert.string());
        fail("cannot load private key " + key.string());
    }
    if (SSL_CTX_check_private_key(native) != 1)
        fail("private key " + key.string() + " does not match certificate " + cert.string());
    return ctx;
}

}  // namespace sigsci
