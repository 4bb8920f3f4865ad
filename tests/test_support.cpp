#include "test_support.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

namespace sigsci::test {

std::filesystem::path data_dir() {
    return SIGSCI_TEST_DATA;
}

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path.string());
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

void write_file(const std::filesystem::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
}

std::vector<std::string> read_lines(const std::filesystem::path& path) {
    std::vector<std::string> out;
    if (!std::filesystem::exists(path)) return out;
    std::istringstream in(read_file(path));
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
}

std::string sample(const std::string& type) {
    return read_file(data_dir() / "samples" / (type + ".json"));
}

std::vector<std::string> sample_types() {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(data_dir() / "samples")) {
        if (e.path().extension() == ".json") out.push_back(e.path().stem().string());
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::string numbered(const std::string& body, int n) {
    const auto brace = body.find('{');
    return body.substr(0, brace + 1) + "\"test_seq\":" + std::to_string(n) + "," +
           body.substr(brace + 1);
}

std::vector<ThreadInfo> threads() {
    std::vector<ThreadInfo> out;
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
        std::ifstream comm(task.path() / "comm");
        std::string name;
        std::getline(comm, name);
        out.push_back({std::stoi(task.path().filename().string()), std::move(name)});
    }
    return out;
}

TempDir::TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("sigsci-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

std::vector<std::string> MemorySink::lines() {
    std::lock_guard lock(mutex_);
    return lines_;
}

bool MemorySink::wait_for(const std::function<bool(const std::string&)>& pred,
                          std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout,
                        [&] { return std::any_of(lines_.begin(), lines_.end(), pred); });
}

bool MemorySink::wait_for_record(const std::function<bool(Json&)>& pred,
                                 std::chrono::milliseconds timeout) {
    return wait_for_records(pred, 1, timeout);
}

bool MemorySink::wait_for_records(const std::function<bool(Json&)>& pred, std::size_t n,
                                  std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] {
        std::size_t found = 0;
        for (const auto& line : lines_) {
            auto record = Json::parse(line);
            if (pred(record) && ++found >= n) return true;
        }
        return false;
    });
}

void MemorySink::sink_it_(const spdlog::details::log_msg& msg) {
    lines_.emplace_back(msg.payload.data(), msg.payload.size());
    cv_.notify_all();
}

std::string HttpResponse::header(const std::string& name) const {
    const auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
}

RawClient::RawClient(std::uint16_t port, bool ipv6) {
    fd_ = ::socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw std::runtime_error("socket failed");
    timeval tv{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int rc = 0;
    if (ipv6) {
        sockaddr_in6 a{};
        a.sin6_family = AF_INET6;
        a.sin6_port = htons(port);
        a.sin6_addr = in6addr_loopback;
        rc = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    } else {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        rc = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    }
    if (rc != 0) {
        const std::string err = std::strerror(errno);
        ::close(fd_);
        fd_ = -1;
        throw std::runtime_error("connect failed: " + err);
    }
}

std::uint16_t RawClient::local_port() const {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
        throw std::runtime_error("getsockname failed");
    return ntohs(a.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&a)->sin6_port
                                         : reinterpret_cast<sockaddr_in*>(&a)->sin_port);
}

RawClient::~RawClient() {
    close();
}

void RawClient::close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

void RawClient::send(const std::string& bytes) {
    std::size_t sent = 0;
    while (sent < bytes.size()) {
        const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
        if (n <= 0) throw std::runtime_error(std::string("send failed: ") + std::strerror(errno));
        sent += static_cast<std::size_t>(n);
    }
}

std::optional<std::string> RawClient::read_more() {
    char buf[16384];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n > 0) return std::string(buf, static_cast<std::size_t>(n));
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        throw std::runtime_error("read timed out");
    return std::nullopt;  // EOF or reset
}

HttpResponse RawClient::read_response() {
    std::size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
        auto more = read_more();
        if (!more) throw std::runtime_error("connection closed before a response");
        buffer_ += *more;
    }
    HttpResponse r;
    std::istringstream head(buffer_.substr(0, end));
    std::string line;
    std::getline(head, line);
    r.status = std::stoi(line.substr(9, 3));
    while (std::getline(head, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        const auto colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string name = line.substr(0, colon);
        std::transform(name.begin(), name.end(), name.begin(), ::tolower);
        r.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
    }
    buffer_.erase(0, end + 4);
    const std::size_t length =
        r.headers.count("content-length") ? std::stoul(r.headers["content-length"]) : 0;
    while (buffer_.size() < length) {
        auto more = read_more();
        if (!more) throw std::runtime_error("connection closed inside a response body");
        buffer_ += *more;
    }
    r.body = buffer_.substr(0, length);
    buffer_.erase(0, length);
    return r;
}

bool RawClient::peer_closed() {
    try {
        for (;;) {
            auto more = read_more();
            if (!more) return true;
            buffer_ += *more;
        }
    } catch (const std::runtime_error&) {
        return false;
    }
}

std::string post(const std::string& path, const std::string& body,
                 const std::optional<std::string>& signature, const std::string& extra_headers) {
    std::string req =
        "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n";
    if (signature) req += "X-SigSci-Signature: " + *signature + "\r\n";
    req += extra_headers;
    req += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    return req;
}

}  // namespace sigsci::test
