#pragma once
// Helpers shared by the tests: temp dirs, sample bodies, a log sink that tests can wait on,
// and a raw-socket HTTP client that can send exactly the bytes a test wants.
#include <spdlog/sinks/base_sink.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "sigsci/envelope.hpp"

namespace sigsci::test {

std::filesystem::path data_dir();
std::string read_file(const std::filesystem::path& path);
void write_file(const std::filesystem::path& path, const std::string& text);
std::vector<std::string> read_lines(const std::filesystem::path& path);
std::string sample(const std::string& type);  // tests/data/samples/TYPE.json
std::vector<std::string> sample_types();      // every sample, sorted
// `body` (a JSON object) with "test_seq": n added first, so repeated sends are not duplicates.
std::string numbered(const std::string& body, int n);

// This process's threads, each as its id and its name (/proc/self/task/TID/comm).
struct ThreadInfo {
    int id;
    std::string name;
};
std::vector<ThreadInfo> threads();

class TempDir {
  public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

  private:
    std::filesystem::path path_;
};

// Captures formatted log lines; wait_for() blocks until a line satisfies the predicate.
class MemorySink final : public spdlog::sinks::base_sink<std::mutex> {
  public:
    std::vector<std::string> lines();
    bool wait_for(const std::function<bool(const std::string&)>& pred,
                  std::chrono::milliseconds timeout = std::chrono::seconds(10));
    // The same over JSON log records (a non-const Json, so that a missing key reads as null).
    bool wait_for_record(const std::function<bool(Json&)>& pred,
                         std::chrono::milliseconds timeout = std::chrono::seconds(10));
    // ...until `n` records satisfy it.
    bool wait_for_records(const std::function<bool(Json&)>& pred, std::size_t n,
                          std::chrono::milliseconds timeout = std::chrono::seconds(10));

  protected:
    void sink_it_(const spdlog::details::log_msg& msg) override;
    void flush_() override {}

  private:
    std::vector<std::string> lines_;
    std::condition_variable_any cv_;
};

struct HttpResponse {
    int status = 0;
    std::map<std::string, std::string> headers;  // names lower-cased
    std::string body;
    std::string header(const std::string& name) const;
};

// A blocking client on 127.0.0.1 (or ::1) with a receive timeout, so a hung server fails the
// test instead of hanging it.
class RawClient {
  public:
    explicit RawClient(std::uint16_t port, bool ipv6 = false);
    ~RawClient();
    RawClient(const RawClient&) = delete;
    RawClient& operator=(const RawClient&) = delete;

    void send(const std::string& bytes);
    // Reads one response (Content-Length bodies). Throws on timeout or a closed connection.
    HttpResponse read_response();
    // True when the server has closed the connection (reads EOF or reset) before the timeout.
    bool peer_closed();
    void close();
    // The client's port, as the server's log lines show it in `remote`.
    std::uint16_t local_port() const;

  private:
    std::optional<std::string> read_more();
    int fd_ = -1;
    std::string buffer_;
};

std::string post(const std::string& path, const std::string& body,
                 const std::optional<std::string>& signature,
                 const std::string& extra_headers = "");

}  // namespace sigsci::test
