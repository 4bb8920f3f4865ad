#pragma once
// For the forward handler's tests: a certificate authority made at test time, and an HTTP(S)
// receiver on 127.0.0.1 port 0 that records what it is sent and answers as scripted.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace sigsci::test {

// A fresh CA and a server certificate it signed for IP 127.0.0.1 and DNS localhost, as PEM
// files in `dir`: ca.pem, server.pem (leaf then CA), server.key.
struct TestCa {
    std::filesystem::path ca_cert;
    std::filesystem::path server_cert;
    std::filesystem::path server_key;
};
TestCa make_test_ca(const std::filesystem::path& dir);

struct ReceivedRequest {
    std::string method;
    std::string target;
    std::map<std::string, std::string> headers;  // names lower-cased
    std::string body;
};

// One scripted answer; when the script runs out, 200 {"ok":true}.
struct ScriptedAnswer {
    int status = 200;
    std::map<std::string, std::string> headers;
    std::string body = R"({"ok":true})";
    bool hang = false;  // read the request and never answer
};

class TestReceiver {
  public:
    // Plain HTTP, or HTTPS with the given certificate chain and key.
    TestReceiver();
    TestReceiver(const std::filesystem::path& cert, const std::filesystem::path& key);
    ~TestReceiver();  // stops and joins
    TestReceiver(const TestReceiver&) = delete;
    TestReceiver& operator=(const TestReceiver&) = delete;

    std::uint16_t port() const;
    void script(std::vector<ScriptedAnswer> answers);
    // Blocks until `n` requests have arrived (false after the timeout).
    bool wait_for(std::size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(10));
    std::vector<ReceivedRequest> requests();
    std::size_t connections() const;

    struct Impl;

  private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace sigsci::test
