#pragma once
// The few things the daemon asks of systemd (libsystemd): readiness and status notifications,
// the watchdog, and sockets passed by socket activation. Each is a no-op when the process was
// not started by systemd, so the daemon runs the same by hand.
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sigsci::systemd {

// Sends `state` ("READY=1", "STATUS=...", several lines allowed) to $NOTIFY_SOCKET, if set.
void notify(std::string_view state);

// How often to send WATCHDOG=1: half of WatchdogSec=, or nothing when no watchdog is set.
std::optional<std::chrono::microseconds> watchdog_interval();

// A socket passed by socket activation; `name` is its FileDescriptorName= ("admin" marks the
// admin listener).
struct ListenFd {
    int fd = -1;
    std::string name;
};

// The sockets in $LISTEN_FDS meant for this process (unsets the variables, so a child does not
// see them). Throws std::runtime_error when a passed descriptor is not a listening TCP socket.
std::vector<ListenFd> listen_fds();

}  // namespace sigsci::systemd
