#pragma once
// What GET /metrics on the admin listener reports, in the Prometheus text format (0.0.4).
// A handful of families with small label sets, counted under one short lock each and rendered
// by hand: no client library needed for this much.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace sigsci {

struct SinkStats;

// The limit that a 503 "overloaded" answer, or a refused connection, met.
enum class Overload : std::uint8_t {
    max_connections,
    max_connections_per_ip,
    max_unverified_body_bytes,
    max_unverified_body_bytes_per_ip,
    max_pending_events,
    max_pending_bytes,
    shutting_down,  // not a limit: the daemon was stopping
};
inline constexpr std::size_t overload_kinds = 7;
std::string_view to_string(Overload why);

class Metrics {
  public:
    // Distinct event types kept per endpoint; later ones are counted as type "_other", so a
    // sender cannot grow the metrics without bound.
    static constexpr std::size_t max_types = 64;

    Metrics();
    ~Metrics();
    Metrics(const Metrics&) = delete;
    Metrics& operator=(const Metrics&) = delete;

    // One answered webhook request; `endpoint` is empty when no endpoint matched.
    void request(std::string_view endpoint, int status);
    // A 401: why the signature did not verify (missing, malformed, mismatch).
    void signature_failure(std::string_view endpoint, std::string_view reason);
    // An event accepted for delivery, or answered as a duplicate of one.
    void event(std::string_view endpoint, std::string_view type);
    void duplicate(std::string_view endpoint);
    // One delivery attempt's outcome: "delivered", "failed" (will retry) or "dead".
    void delivery(std::string_view handler, std::string_view outcome, double seconds);
    // One spool commit that stored `events` new events, and how long it took.
    void spool_commit(double seconds, std::size_t events);
    void reload(bool ok);
    // A request or webhook connection refused with 503 for want of capacity.
    void overloaded(Overload why);
    void connection_opened();
    void connection_closed();

    std::uint64_t requests() const;
    std::uint64_t deliveries() const;
    std::uint64_t open_connections() const;

    // The whole exposition; `sink` gives the backlog and dead-letter gauges.
    std::string render(const SinkStats& sink) const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// A label value as the text format wants it: backslash, double quote and newline escaped.
std::string escape_label_value(std::string_view value);

}  // namespace sigsci
