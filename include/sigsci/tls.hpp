#pragma once
// TLS for listeners: a server context with our defaults (TLS 1.2 or newer, forward-secret AEAD
// ciphers for 1.2, OpenSSL's defaults for 1.3), built from a certificate chain and key file.
#include <filesystem>
#include <memory>

namespace boost::asio::ssl {
class context;
}

namespace sigsci {

// Throws std::runtime_error saying what is wrong with the files (unreadable, not PEM, the key
// does not match the certificate).
std::shared_ptr<boost::asio::ssl::context> make_server_tls(const std::filesystem::path& cert,
                                                           const std::filesystem::path& key);

}  // namespace sigsci
