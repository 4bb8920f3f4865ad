#include "sigsci/systemd.hpp"

#include <sys/socket.h>
#include <systemd/sd-daemon.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace sigsci::systemd {

void notify(std::string_view state) {
    const std::string s(state);
    sd_notify(0, s.c_str());
}

std::optional<std::chrono::microseconds> watchdog_interval() {
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return std::nullopt;
    return std::chrono::microseconds(usec / 2);
}

std::vector<ListenFd> listen_fds() {
    char** names = nullptr;
    const int n = sd_listen_fds_with_names(1, &names);
    if (n < 0) {
        throw std::runtime_error(std::string("LISTEN_FDS: ") + std::strerror(-n));
    }
    std::vector<ListenFd> out;
    for (int i = 0; i < n; ++i) {
        const int fd = SD_LISTEN_FDS_START + i;
        std::string name = names && names[i] ? names[i] : "";
        out.push_back({fd, name});
        if (names) std::free(names[i]);
    }
    std::free(names);
    for (const auto& s : out) {
        if (sd_is_socket_inet(s.fd, AF_UNSPEC, SOCK_STREAM, 1, 0) <= 0) {
            throw std::runtime_error("socket activation: descriptor " + std::to_string(s.fd) +
                                     " (" + (s.name.empty() ? "unnamed" : s.name) +
                                     ") is not a listening TCP socket; use "
                                     "ListenStream=ADDRESS:PORT in the .socket unit");
        }
    }
    return out;
}

}  // namespace sigsci::systemd
