#pragma once
// The request path as plain functions: request head in, decision out; body in, response out.
// Nothing here touches a socket; server.cpp only reads, calls these, and writes.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>

#include "sigsci/config.hpp"
#include "sigsci/dispatcher.hpp"
#include "sigsci/handler.hpp"

namespace sigsci {

// One consistent view of config and live handlers. A request uses one snapshot from head to
// answer; SIGHUP swaps in a new one without disturbing requests in flight.
struct Runtime {
    Config config;
    std::unordered_map<std::string, HandlerPtr> handlers;

    // Builds the handlers (opens files); throws std::runtime_error naming the handler.
    static std::shared_ptr<const Runtime> build(Config config);

    std::vector<HandlerPtr> handlers_for(const EndpointConfig& endpoint,
                                         std::string_view type) const;
};

struct RequestHead {
    std::string_view method;
    std::string_view target;
    std::optional<std::uint64_t> content_length;  // absent for chunked bodies
    std::string_view transfer_encoding;           // empty when the header is absent
    std::string_view signature;                   // X-SigSci-Signature; empty when absent
};

struct Response {
    int status = 200;
    std::string body;          // small JSON
    std::string content_type;  // empty: application/json
    std::string allow;         // the Allow header, for 405
    bool close = false;        // the connection cannot carry another request after this answer
    bool duplicate = false;
    // For the request log line only.
    std::string endpoint;
    std::string event_id;
    std::string type;
    std::string error;
};

Response error_response(int status, std::string_view message);

// Why a correctly signed event falls outside its endpoint's replay window ("stale: ..."), or
// nothing when it is inside.
std::optional<std::string> replay_problem(const ReplayWindow& window,
                                          const std::optional<std::string>& created,
                                          std::chrono::system_clock::time_point now);

// A verified, parsed, routed event, ready to be kept.
class Metrics;

struct Accepted {
    EventPtr event;
    std::vector<HandlerPtr> handlers;  // empty: unrouted
};

class WebhookService {
  public:
    explicit WebhookService(std::shared_ptr<const Runtime> runtime);
    // The sink (and metrics, if counted) must be attached before requests arrive.
    void attach(EventSink& sink, Metrics* metrics = nullptr) {
        sink_ = &sink;
        metrics_ = metrics;
    }
    Metrics* metrics() const { return metrics_; }

    std::shared_ptr<const Runtime> snapshot() const {
        std::lock_guard lock(runtime_mutex_);
        return runtime_;
    }
    // The old runtime is released after the lock (its handlers may close files).
    void replace(std::shared_ptr<const Runtime> runtime) {
        std::lock_guard lock(runtime_mutex_);
        runtime_.swap(runtime);
    }
    void set_ready(bool ready) { ready_.store(ready); }

    // Steps 1-2 of the request path, and step 3 as far as the head tells: an answer now (404,
    // 405, 501, 413, /healthz, 401 for a signature that no body can match) or the endpoint whose
    // body should be read.
    std::variant<Response, const EndpointConfig*> route_head(const Runtime& runtime,
                                                             const RequestHead& head) const;

    // The admin listener: GET /metrics (Prometheus text) and GET /healthz; 404 otherwise.
    Response route_admin(const RequestHead& head) const;

    // Counts an answered webhook request in the metrics (requests, 401s, events, duplicates).
    void count(const Response& answered) const;

    // Steps 3-4: verify the raw body, then parse and route it: an answer now (401, 400), or
    // an event to keep.
    std::variant<Response, Accepted> check_body(const Runtime& runtime,
                                                const EndpointConfig& endpoint,
                                                std::string_view signature, std::string body) const;

    // Step 5: hands the event to the sink; `done` runs once it is kept (or refused).
    void submit(Accepted accepted, SubmitDone done);

    // The answer once the sink has spoken: 200 accepted or duplicate, 503 otherwise.
    Response answer(const Event& event, bool unrouted, const SubmitResult& result) const;

  private:
    Response healthz() const;

    // A mutex, not std::atomic<std::shared_ptr>: libstdc++ 12's load() lets go of its lock
    // with a relaxed store, a data race with a concurrent store() that ThreadSanitizer reports
    // (google/sanitizers#1558). Uncontended, a snapshot costs what the atomic load did (both
    // about 7 ns on the benchmark machine).
    mutable std::mutex runtime_mutex_;
    std::shared_ptr<const Runtime> runtime_;
    EventSink* sink_ = nullptr;
    Metrics* metrics_ = nullptr;
    std::atomic<bool> ready_{false};
};

}  // namespace sigsci
