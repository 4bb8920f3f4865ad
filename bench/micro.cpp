// Google Benchmark micro-benchmarks of the request path's pure parts, on three of the sample
// bodies (tests/data/samples), compact as Signal Sciences sends them. Each step of the path has the
// way it was done before next to it, as a peer measured in the same run:
//   verify      HMAC-SHA256 with a keyed context kept per thread  vs  one-shot HMAC()
//   validate    simdjson, no tree (parse_envelope)                vs  nlohmann tree (the old way)
//   archive     the body's own bytes (archive_line)                vs  tree re-serialised
//   route       route_handlers on a three-route endpoint
// Run: build/release/sigsci_micro [--benchmark_filter=...]
#include <benchmark/benchmark.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "sigsci/clock.hpp"
#include "sigsci/envelope.hpp"
#include "sigsci/event.hpp"
#include "sigsci/router.hpp"
#include "sigsci/signature.hpp"
#include "sigsci/spool.hpp"
#include "sigsci/spool_sink.hpp"

namespace {

const std::string key = "a-signing-key-of-typical-length-0123456789";

struct Sample {
    std::string name;
    std::string body;    // compact, as Signal Sciences sends it
    std::string pretty;  // the sample file as it is, with line breaks
};

// Three bodies that span the samples: the smallest, a typical flag, and the largest.
const std::vector<Sample>& samples() {
    static const std::vector<Sample> all = [] {
        std::vector<Sample> out;
        for (const auto& entry : std::filesystem::directory_iterator(SIGSCI_SAMPLES)) {
            std::ifstream in(entry.path());
            std::stringstream text;
            text << in.rdbuf();
            out.push_back(
                {entry.path().stem().string(), sigsci::minify_json(text.str()), text.str()});
        }
        std::sort(out.begin(), out.end(),
                  [](const Sample& a, const Sample& b) { return a.body.size() < b.body.size(); });
        const auto flag =
            std::find_if(out.begin(), out.end(), [](const Sample& s) { return s.name == "flag"; });
        return std::vector<Sample>{out.front(), *flag, out.back()};
    }();
    return all;
}

void label(benchmark::State& state, const Sample& s) {
    state.SetLabel(s.name + " " + std::to_string(s.body.size()) + " B");
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * s.body.size()));
}

void BM_Verify(benchmark::State& state) {
    const auto& s = samples()[static_cast<std::size_t>(state.range(0))];
    const std::vector<std::string> keys{key};
    const auto header = sigsci::to_hex(sigsci::hmac_sha256(key, s.body));
    for (auto _ : state) {
        benchmark::DoNotOptimize(sigsci::verify_signature(header, s.body, keys));
    }
    label(state, s);
}

void BM_Verify_OneShotHmac(benchmark::State& state) {  // the peer: OpenSSL's HMAC() each time
    const auto& s = samples()[static_cast<std::size_t>(state.range(0))];
    unsigned char out[32];
    unsigned int len = 0;
    for (auto _ : state) {
        benchmark::DoNotOptimize(HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                                      reinterpret_cast<const unsigned char*>(s.body.data()),
                                      s.body.size(), out, &len));
    }
    label(state, s);
}

void BM_Validate(benchmark::State& state) {
    const auto& s = samples()[static_cast<std::size_t>(state.range(0))];
    for (auto _ : state) {
        auto envelope = sigsci::parse_envelope(s.body);
        benchmark::DoNotOptimize(envelope);
    }
    label(state, s);
}

void BM_Validate_NlohmannTree(benchmark::State& state) {  // the peer: the tree the path built
    const auto& s = samples()[static_cast<std::size_t>(state.range(0))];
    for (auto _ : state) {
        auto tree = sigsci::envelope_tree(s.body);
        benchmark::DoNotOptimize(tree);
    }
    label(state, s);
}

sigsci::EventPtr event_of(const Sample& s) {
    return sigsci::make_event("/sigsci/prod", s.body, sigsci::parse_envelope(s.body).value(),
                              std::chrono::system_clock::now());
}

void BM_ArchiveLine(benchmark::State& state) {
    const auto& s = samples()[static_cast<std::size_t>(state.range(0))];
    const auto event = event_of(s);
    for (auto _ : state) {
        benchmark::DoNotOptimize(sigsci::archive_line(*event));
    }
    label(state, s);
}

void BM_ArchiveLine_PrettyBody(benchmark::State& state) {  // line breaks: minified first
    const auto& s = samples()[static_cast<std::size_t>(state.range(0))];
    const Sample pretty{s.name, s.pretty, s.pretty};
    const auto event = event_of(pretty);
    for (auto _ : state) {
        benchmark::DoNotOptimize(sigsci::archive_line(*event));
    }
    label(state, pretty);
}

void BM_ArchiveLine_FromTree(benchmark::State& state) {  // the peer: parse, rebuild, dump
    const auto& s = samples()[static_cast<std::size_t>(state.range(0))];
    for (auto _ : state) {
        const auto event = event_of(s);  // a fresh event, so the tree is built each time
        benchmark::DoNotOptimize(sigsci::archive_record(*event).dump());
    }
    label(state, s);
}

void BM_Route(benchmark::State& state) {
    sigsci::EndpointConfig endpoint;
    endpoint.path = "/sigsci/prod";
    endpoint.routes = {{{"flag", "expireFlag"}, {"block"}},
                       {{"agentAlert"}, {"page"}},
                       {{"*"}, {"archive", "log"}}};
    for (auto _ : state) {
        benchmark::DoNotOptimize(sigsci::route_handlers(endpoint, "flag"));
    }
}

void BM_EventId(benchmark::State& state) {
    for (auto _ : state) {
        benchmark::DoNotOptimize(sigsci::new_event_id(std::chrono::system_clock::now()));
    }
}

void BM_BodyHash(benchmark::State& state) {  // duplicate detection's key
    const auto& s = samples()[static_cast<std::size_t>(state.range(0))];
    for (auto _ : state) {
        benchmark::DoNotOptimize(sigsci::body_hash("/sigsci/prod", s.body));
    }
    label(state, s);
}

// The spool's cost per event: one durable commit (WAL, synchronous=FULL) of `batch` flag events
// routed to `handlers` handlers, then the commit that records those deliveries done:
//   outcomes 0: none (the insert alone);
//   outcomes 1: a pending row per delivery, each updated to delivered afterwards (the old way);
//   outcomes 2: deliveries run from memory, recorded by one progress mark per handler (the
//               daemon's way since the mark was introduced).
// The CPU time column is the whole process's (user and kernel, fdatasync included): it is what a
// one-core daemon pays.
void BM_SpoolCommit(benchmark::State& state) {
    const auto batch = static_cast<std::size_t>(state.range(0));
    const auto handlers = static_cast<std::size_t>(state.range(1));
    const auto outcomes = state.range(2);
    const auto dir = std::filesystem::temp_directory_path() /
                     ("sigsci-micro-spool-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    {
        auto spool = sigsci::open_sqlite_spool(dir / "spool.db");
        const auto body = std::make_shared<const std::string>(samples()[1].body);
        std::vector<sigsci::NewEvent> rows(batch);
        std::vector<sigsci::DeliveryUpdate> done;
        for (auto _ : state) {
            const auto now = std::chrono::system_clock::now();
            for (auto& row : rows) {
                row.id = sigsci::new_event_id(now);
                row.received_at = "2026-11-30T00:00:00.000Z";
                row.received_ms = 1;
                row.endpoint = "/sigsci/prod";
                row.type = "flag";
                row.body = body;
                row.body_hash = sigsci::body_hash(row.id, *body);
                row.handlers.assign(handlers, "archive");
                for (std::size_t h = 0; h < handlers; ++h) row.handlers[h] += std::to_string(h);
                row.deliveries_in_memory = outcomes == 2;
            }
            const auto stored = spool->commit(rows, {});
            if (outcomes == 2) {
                std::vector<sigsci::ProgressMark> marks;
                for (const auto& h : rows.front().handlers)
                    marks.push_back({h, stored.back().seq + 1});
                spool->commit({}, {}, marks);
            } else if (outcomes == 1) {
                done.clear();
                for (const auto& s : stored) {
                    for (const auto& h : rows.front().handlers) {
                        done.push_back({s.seq, h, sigsci::DeliveryState::delivered, 1, 0, {}});
                    }
                }
                spool->commit({}, done);
            }
        }
    }
    std::filesystem::remove_all(dir);
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * batch));
    state.SetLabel(std::to_string(samples()[1].body.size()) + " B bodies");
}

BENCHMARK(BM_Verify)->DenseRange(0, 2);
BENCHMARK(BM_Verify_OneShotHmac)->DenseRange(0, 2);
BENCHMARK(BM_Validate)->DenseRange(0, 2);
BENCHMARK(BM_Validate_NlohmannTree)->DenseRange(0, 2);
BENCHMARK(BM_ArchiveLine)->DenseRange(0, 2);
BENCHMARK(BM_ArchiveLine_PrettyBody)->DenseRange(0, 2);
BENCHMARK(BM_ArchiveLine_FromTree)->DenseRange(0, 2);
BENCHMARK(BM_BodyHash)->DenseRange(0, 2);
BENCHMARK(BM_Route);
BENCHMARK(BM_EventId);
BENCHMARK(BM_SpoolCommit)
    ->ArgNames({"batch", "handlers", "outcomes"})
    ->Args({1, 1, 1})
    ->Args({1, 1, 2})
    ->Args({32, 0, 0})
    ->Args({32, 1, 1})
    ->Args({32, 1, 2})
    ->Args({32, 2, 1})
    ->Args({32, 2, 2})
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
