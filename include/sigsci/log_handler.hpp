#pragma once
#include "sigsci/handler.hpp"

namespace sigsci {

enum class PayloadMode { full, summary, none };

// `log`: one structured line per event (msg "event") in the daemon's own log.
class LogHandler final : public Handler {
  public:
    LogHandler(std::string name, PayloadMode mode) : Handler(std::move(name)), mode_(mode) {}
    void deliver(const EventPtr& event, DeliveryDone done) override;

  private:
    PayloadMode mode_;
};

// Top-level scalars kept (long strings cut), nested arrays and objects replaced by their size.
Json summarize_payload(const Json& payload);

}  // namespace sigsci
