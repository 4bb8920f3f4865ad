#pragma once
// HTTP/1.1 listeners and connections (Boost.Beast). Reads requests within the configured limits,
// asks WebhookService for the answer, writes it. Only this file's .cpp includes Beast.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sigsci/config.hpp"

namespace boost::asio {
class io_context;
}

namespace sigsci {

class WebhookService;
struct Response;

// An answer as HTTP/1.`version % 10` bytes, into `out` (its capacity reused): the status line,
// then Server, Content-Type, Allow (when set), Connection (close for a 1.1 answer that ends the
// connection, keep-alive for a 1.0 one that does not) and Content-Length, then the body. The
// same bytes Beast's serializer wrote for the same answer, without its per-field allocations.
void serialize_response(const Response& r, unsigned version, bool keep_alive, std::string& out);

// What limits.max_connections_per_ip counts a client by: its IPv4 address (also when it comes
// as an IPv4-mapped IPv6 address, as on a dual-stack socket systemd may pass), or the /64
// network of its IPv6 address, since one IPv6 subscriber holds a whole /64 and could otherwise
// take every slot with addresses of its own. Empty for text that is not an address.
std::string connection_limit_key(std::string_view address);

// What a listener serves: webhooks, or the admin endpoints (/metrics, /healthz).
enum class Listener { webhook, admin };

class Server {
  public:
    // io_threads: how many threads run `ioc`. With exactly one, connections need no strand (a
    // strand costs a lock and a queue on every completion); otherwise each gets one.
    Server(boost::asio::io_context& ioc, WebhookService& service, unsigned io_threads = 0);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Binds every address; throws std::runtime_error naming the address that failed.
    void listen(const std::vector<ListenConfig>& addresses, Listener role = Listener::webhook);
    // SIGHUP: TLS listeners load their certificate and key again; new connections use them,
    // open ones keep theirs. A file that fails to load is logged and the old one stays.
    void reload_tls(const std::vector<ListenConfig>& addresses);
    // Serves on a listening socket passed by systemd (socket activation); takes ownership.
    void adopt(int fd, Listener role);
    // The bound addresses, e.g. "127.0.0.1:43123", in the order added (port 0 resolved).
    std::vector<std::string> bound_addresses(Listener role = Listener::webhook) const;
    std::vector<std::uint16_t> ports(Listener role = Listener::webhook) const;

    void start_accepting();
    // Closes the listeners, then idle keep-alive connections; requests in flight finish.
    void stop_accepting();
    // Waits until every connection has closed; false on timeout.
    bool wait_connections_closed(std::chrono::milliseconds timeout);
    // Closes whatever connections remain (after the drain period).
    void close_all();
    std::size_t connection_count() const;

  private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace sigsci
