#pragma once
// Wires the pieces: I/O threads, listeners, the request service and the dispatcher; handles
// reload and drain. main() and the integration tests both drive the daemon through this.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sigsci/config.hpp"
#include "sigsci/result.hpp"

namespace sigsci {

class Daemon {
  public:
    // Builds the handlers (opens files); throws std::runtime_error when that fails.
    explicit Daemon(Config config);
    ~Daemon();
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;

    // Binds every listener (throws std::runtime_error naming the address), or takes the sockets
    // systemd passed (socket activation), starts serving, and tells systemd READY=1.
    void start();
    std::vector<std::string> bound_addresses() const;
    std::vector<std::uint16_t> ports() const;
    std::vector<std::uint16_t> admin_ports() const;

    // SIGHUP: re-reads the config file. A bad config is logged and the old one keeps serving;
    // files are reopened either way.
    bool reload();
    bool reload(Result<Config> next);

    // SIGTERM: stop accepting, finish requests and deliveries within drain_timeout_ms, stop.
    void shutdown();

    // start(), then serve until SIGTERM or SIGINT, then shutdown(). SIGHUP's reloads run on a
    // thread of their own, so that one stuck on a hung file cannot hold up SIGTERM.
    void run_until_signalled();
    // Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and the threads it starts from
    // then on) until run_until_signalled() has its handler in place and lets them through.
    static void block_signals();

    // For tests and tools: block until no delivery is in flight.
    bool wait_deliveries_idle(std::chrono::milliseconds timeout);
    std::size_t connection_count() const;

  private:
    struct Impl;
    std::shared_ptr<Impl> impl_;  // shared with a reload thread that may outlive a stop
};

}  // namespace sigsci
