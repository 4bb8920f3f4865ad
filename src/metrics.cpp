#include "sigsci/metrics.hpp"

#include <array>
#include <charconv>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <utility>

#include "sigsci/dispatcher.hpp"

namespace sigsci {

namespace {

constexpr std::string_view prefix = "sigsci_webhookd_";
// Upper bounds of the delivery-latency buckets, in seconds: from a file append to a slow command.
constexpr std::array<double, 14> bucket_bounds{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                               0.5,   1,     2.5,  5,     10,   30,  60};
constexpr std::array<std::string_view, 14> bucket_labels{"0.001", "0.005", "0.01", "0.025", "0.05",
                                                         "0.1",   "0.25",  "0.5",  "1",     "2.5",
                                                         "5",     "10",    "30",   "60"};

using Key = std::pair<std::string, std::string>;
using KeyView = std::pair<std::string_view, std::string_view>;

// Lets a map keyed by owned strings be searched with views, so counting allocates only for a
// series seen for the first time.
struct KeyLess {
    using is_transparent = void;
    static KeyView view(const Key& k) { return {k.first, k.second}; }
    static KeyView view(const KeyView& k) { return k; }
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
        return view(a) < view(b);
    }
};

using Counters = std::map<Key, std::uint64_t, KeyLess>;

void bump(Counters& counters, KeyView key) {
    auto it = counters.find(key);
    if (it == counters.end()) it = counters.emplace(Key{key.first, key.second}, 0).first;
    ++it->second;
}

// Observations of a duration against upper bounds `bounds` (in seconds), in one of N buckets or
// past the last (counted only in `count`: the +Inf bucket).
template <std::size_t N>
struct Histogram {
    std::array<std::uint64_t, N> buckets{};  // not cumulative
    std::uint64_t count = 0;
    double sum = 0;

    void observe(double seconds, const std::array<double, N>& bounds) {
        for (std::size_t i = 0; i < N; ++i) {
            if (seconds <= bounds[i]) {
                ++buckets[i];
                break;
            }
        }
        ++count;
        sum += seconds;
    }
};

// Upper bounds of the spool-commit buckets, in seconds: a flush to disk takes from well under a
// millisecond (a local SSD) to seconds (a stalled virtual disk).
constexpr std::array<double, 13> commit_bounds{0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05,
                                               0.1,    0.25,  0.5,   1,     2.5,  5};
constexpr std::array<std::string_view, 13> commit_labels{
    "0.0005", "0.001", "0.002", "0.005", "0.01", "0.025", "0.05",
    "0.1",    "0.25",  "0.5",   "1",     "2.5",  "5"};

std::string_view endpoint_label(std::string_view endpoint) {
    // Endpoint paths start with '/', so "none" cannot be one.
    return endpoint.empty() ? std::string_view("none") : endpoint;
}

std::string number(double v) {
    std::array<char, 64> buf;
    const auto r = std::to_chars(buf.data(), buf.data() + buf.size(), v);
    return std::string(buf.data(), r.ptr);
}

void header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
    out.append("# HELP ").append(prefix).append(name).append(" ").append(help).append("\n");
    out.append("# TYPE ").append(prefix).append(name).append(" ").append(type).append("\n");
}

using Label = std::pair<std::string_view, std::string_view>;

void sample(std::string& out, std::string_view name, std::span<const Label> labels,
            std::string_view value) {
    out.append(prefix).append(name);
    if (labels.size() != 0) {
        out.push_back('{');
        bool first = true;
        for (const auto& [k, v] : labels) {
            if (!first) out.push_back(',');
            first = false;
            out.append(k).append("=\"").append(escape_label_value(v)).append("\"");
        }
        out.push_back('}');
    }
    out.append(" ").append(value).append("\n");
}

void sample(std::string& out, std::string_view name, std::initializer_list<Label> labels,
            std::string_view value) {
    sample(out, name, std::span<const Label>(labels.begin(), labels.size()), value);
}

// A histogram's _bucket (cumulative, `le` from `le_labels`, then +Inf), _sum and _count samples,
// each with `series` first when given.
template <std::size_t N>
void histogram_samples(std::string& out, std::string_view name, std::optional<Label> series,
                       const Histogram<N>& h, const std::array<std::string_view, N>& le_labels) {
    std::array<Label, 2> labels{};
    std::size_t n = 0;
    if (series) labels[n++] = *series;
    const std::span<const Label> plain(labels.data(), n);
    const std::span<const Label> with_le(labels.data(), n + 1);
    labels[n].first = "le";
    const std::string bucket = std::string(name) + "_bucket";
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < N; ++i) {
        cumulative += h.buckets[i];
        labels[n].second = le_labels[i];
        sample(out, bucket, with_le, std::to_string(cumulative));
    }
    labels[n].second = "+Inf";
    sample(out, bucket, with_le, std::to_string(h.count));
    sample(out, std::string(name) + "_sum", plain, number(h.sum));
    sample(out, std::string(name) + "_count", plain, std::to_string(h.count));
}

void counter_family(std::string& out, std::string_view name, std::string_view help,
                    std::string_view label1, std::string_view label2, const Counters& counters) {
    header(out, name, "counter", help);
    for (const auto& [key, value] : counters) {
        sample(out, name, {{label1, key.first}, {label2, key.second}}, std::to_string(value));
    }
}

}  // namespace

std::string escape_label_value(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (const char c : value) {
        switch (c) {
            case '\\':
                out += "\\\\";
                break;
            case '"':
                out += "\\\"";
                break;
            case '\n':
                out += "\\n";
                break;
            default:
                out += c;
        }
    }
    return out;
}

struct Metrics::Impl {
    const double start_time =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    std::atomic<std::uint64_t> requests{0};
    std::atomic<std::uint64_t> deliveries{0};
    std::atomic<std::uint64_t> connections{0};
    std::atomic<std::uint64_t> reloads_ok{0};
    std::atomic<std::uint64_t> reloads_failed{0};
    std::array<std::atomic<std::uint64_t>, overload_kinds> overloads{};

    mutable std::mutex mutex;                                    // guards everything below
    Counters by_status;                                          // (endpoint, status)
    Counters signature_failures;                                 // (endpoint, reason)
    Counters events;                                             // (endpoint, type)
    Counters duplicates;                                         // (endpoint, "")
    std::map<std::string, std::size_t, std::less<>> types_seen;  // per endpoint
    Counters outcomes;                                           // (handler, outcome)
    std::map<std::string, Histogram<bucket_bounds.size()>, std::less<>> latency;  // per handler
    Histogram<commit_bounds.size()> commits;
    std::uint64_t committed_events = 0;
};

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}
Metrics::~Metrics() = default;

void Metrics::request(std::string_view endpoint, int status) {
    impl_->requests.fetch_add(1, std::memory_order_relaxed);
    std::array<char, 8> buf;
    const auto r = std::to_chars(buf.data(), buf.data() + buf.size(), status);
    std::lock_guard lock(impl_->mutex);
    bump(impl_->by_status, {endpoint_label(endpoint), std::string_view(buf.data(), r.ptr)});
}

void Metrics::signature_failure(std::string_view endpoint, std::string_view reason) {
    std::lock_guard lock(impl_->mutex);
    bump(impl_->signature_failures, {endpoint, reason});
}

void Metrics::event(std::string_view endpoint, std::string_view type) {
    std::lock_guard lock(impl_->mutex);
    if (impl_->events.find(KeyView{endpoint, type}) == impl_->events.end()) {
        auto seen = impl_->types_seen.find(endpoint);
        if (seen == impl_->types_seen.end())
            seen = impl_->types_seen.emplace(std::string(endpoint), 0).first;
        if (seen->second >= max_types) {
            type = "_other";
        } else {
            ++seen->second;
        }
    }
    bump(impl_->events, {endpoint, type});
}

void Metrics::duplicate(std::string_view endpoint) {
    std::lock_guard lock(impl_->mutex);
    bump(impl_->duplicates, {endpoint, {}});
}

void Metrics::delivery(std::string_view handler, std::string_view outcome, double seconds) {
    impl_->deliveries.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard lock(impl_->mutex);
    bump(impl_->outcomes, {handler, outcome});
    auto it = impl_->latency.find(handler);
    if (it == impl_->latency.end()) it = impl_->latency.try_emplace(std::string(handler)).first;
    it->second.observe(seconds, bucket_bounds);
}

void Metrics::spool_commit(double seconds, std::size_t events) {
    std::lock_guard lock(impl_->mutex);
    impl_->commits.observe(seconds, commit_bounds);
    impl_->committed_events += events;
}

void Metrics::reload(bool ok) {
    (ok ? impl_->reloads_ok : impl_->reloads_failed).fetch_add(1, std::memory_order_relaxed);
}

std::string_view to_string(Overload why) {
    switch (why) {
        case Overload::max_connections:
            return "max_connections";
        case Overload::max_connections_per_ip:
            return "max_connections_per_ip";
        case Overload::max_unverified_body_bytes:
            return "max_unverified_body_bytes";
        case Overload::max_unverified_body_bytes_per_ip:
            return "max_unverified_body_bytes_per_ip";
        case Overload::max_pending_events:
            return "max_pending_events";
        case Overload::max_pending_bytes:
            return "max_pending_bytes";
        case Overload::shutting_down:
            return "shutting_down";
    }
    return "unknown";
}

void Metrics::overloaded(Overload why) {
    impl_->overloads[static_cast<std::size_t>(why)].fetch_add(1, std::memory_order_relaxed);
}

void Metrics::connection_opened() {
    impl_->connections.fetch_add(1, std::memory_order_relaxed);
}
void Metrics::connection_closed() {
    impl_->connections.fetch_sub(1, std::memory_order_relaxed);
}

std::uint64_t Metrics::requests() const {
    return impl_->requests.load(std::memory_order_relaxed);
}
std::uint64_t Metrics::deliveries() const {
    return impl_->deliveries.load(std::memory_order_relaxed);
}
std::uint64_t Metrics::open_connections() const {
    return impl_->connections.load(std::memory_order_relaxed);
}

std::string Metrics::render(const SinkStats& sink) const {
    std::string out;
    out.reserve(4096);
    header(out, "build_info", "gauge", "Always 1; the version is a label.");
    sample(out, "build_info", {{"version", SIGSCI_VERSION}}, "1");
    header(out, "start_time_seconds", "gauge", "When the process started, in Unix seconds.");
    sample(out, "start_time_seconds", {}, number(impl_->start_time));
    header(out, "open_connections", "gauge", "Webhook connections open now.");
    sample(out, "open_connections", {}, std::to_string(open_connections()));
    header(out, "spool_backlog", "gauge", "Deliveries not yet done (pending or being retried).");
    sample(out, "spool_backlog", {}, std::to_string(sink.backlog));
    header(out, "spool_dead", "gauge", "Dead-lettered deliveries waiting for an operator.");
    sample(out, "spool_dead", {}, std::to_string(sink.dead));
    header(out, "spool_checkpoint_failures_total", "counter",
           "WAL checkpoints that failed (the disk or the file); the WAL grows until one succeeds.");
    sample(out, "spool_checkpoint_failures_total", {}, std::to_string(sink.checkpoint_failures));
    header(out, "reloads_total", "counter", "Configuration reloads (SIGHUP), by result.");
    sample(out, "reloads_total", {{"result", "ok"}}, std::to_string(impl_->reloads_ok.load()));
    sample(out, "reloads_total", {{"result", "failed"}},
           std::to_string(impl_->reloads_failed.load()));

    header(out, "overloaded_total", "counter",
           "Requests and webhook connections refused with 503 for want of capacity, by the limit "
           "they met.");
    for (std::size_t i = 0; i < overload_kinds; ++i) {
        sample(out, "overloaded_total", {{"limit", to_string(static_cast<Overload>(i))}},
               std::to_string(impl_->overloads[i].load(std::memory_order_relaxed)));
    }

    std::lock_guard lock(impl_->mutex);
    counter_family(out, "requests_total", "Webhook requests answered, by endpoint and status.",
                   "endpoint", "status", impl_->by_status);
    counter_family(out, "signature_failures_total",
                   "Requests refused with 401, by endpoint and reason.", "endpoint", "reason",
                   impl_->signature_failures);
    counter_family(out, "events_total", "Events accepted for delivery, by endpoint and type.",
                   "endpoint", "type", impl_->events);
    header(out, "duplicate_events_total", "counter",
           "Bodies answered as duplicates of an earlier event, by endpoint.");
    for (const auto& [key, value] : impl_->duplicates) {
        sample(out, "duplicate_events_total", {{"endpoint", key.first}}, std::to_string(value));
    }
    counter_family(out, "deliveries_total", "Delivery attempts, by handler and outcome.", "handler",
                   "outcome", impl_->outcomes);
    header(out, "delivery_duration_seconds", "histogram",
           "Time one delivery attempt took, by handler.");
    for (const auto& [handler, h] : impl_->latency) {
        histogram_samples(out, "delivery_duration_seconds", Label{"handler", handler}, h,
                          bucket_labels);
    }
    // With the spool on: every handler with deliveries waiting, and at 0 every other that has
    // had one, so that a handler's series does not vanish when it catches up.
    if (sink.by_handler) {
        header(out, "handler_backlog", "gauge",
               "Deliveries not yet done, by handler (the spool's rows as of its last count, "
               "every 2 s or less often, and those running from memory).");
        const auto& waiting = sink.backlog_by_handler;
        auto w = waiting.begin();
        auto l = impl_->latency.begin();
        while (w != waiting.end() || l != impl_->latency.end()) {
            const bool from_w =
                l == impl_->latency.end() || (w != waiting.end() && w->first <= l->first);
            const std::string& name = from_w ? w->first : l->first;
            const auto value = from_w ? w->second : 0;
            if (l != impl_->latency.end() && l->first == name) ++l;
            if (from_w) ++w;
            sample(out, "handler_backlog", {{"handler", name}}, std::to_string(value));
        }
    }
    header(out, "spool_commit_duration_seconds", "histogram",
           "Time a spool commit holding new events took, fsync included: what a 200 waits for.");
    histogram_samples(out, "spool_commit_duration_seconds", std::nullopt, impl_->commits,
                      commit_labels);
    header(out, "spool_committed_events_total", "counter",
           "Events stored by those commits (divided by their count: events per commit).");
    sample(out, "spool_committed_events_total", {}, std::to_string(impl_->committed_events));
    return out;
}

}  // namespace sigsci
