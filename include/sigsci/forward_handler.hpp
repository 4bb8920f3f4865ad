#pragma once
// `forward`: sends each event to an HTTP(S) destination (a chat webhook, a SIEM collector,
// another sigsci-webhookd), over kept-alive connections, with certificate and hostname
// verification on by default. See docs/handlers.md.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "sigsci/forward.hpp"
#include "sigsci/handler.hpp"

namespace sigsci {

struct ForwardConfig {
    Url url;
    std::string method = "POST";
    std::vector<std::pair<std::string, std::string>> headers;  // values may be secrets
    std::optional<BodyTemplate> body;          // absent: the raw envelope, byte for byte
    std::chrono::milliseconds timeout{10000};  // per attempt: connect, TLS, send, answer
    std::size_t max_concurrent = 8;            // requests in flight (and connections kept)
    std::filesystem::path ca_file;             // empty: the system's CA store
    bool insecure_skip_verify = false;
    std::string sign_header = "X-SigSci-Signature";
    std::optional<std::string> sign_key;  // secret: re-sign the body sent with HMAC-SHA256
};

// How much of a destination's answer is read (the rest is not) and how much goes in the log.
inline constexpr std::size_t max_forward_response_bytes = 64 * 1024;
inline constexpr std::size_t forward_log_excerpt_bytes = 512;

class ForwardHandler final : public Handler {
  public:
    // Builds the TLS context (throws std::runtime_error if the CA file cannot be loaded).
    ForwardHandler(std::string name, ForwardConfig config);
    ~ForwardHandler() override;

    void deliver(const EventPtr& event, DeliveryDone done) override;
    void terminate() override;
    std::size_t max_in_flight() const override;

    // Connections this handler has opened so far (reuse shows as a small number).
    std::uint64_t connections_opened() const;

    struct Impl;

  private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace sigsci
