#pragma once
// Thread names, so that `top -H`, `ps -L` and /proc/PID/task/TID/comm show which of the daemon's
// threads is busy (docs/architecture.md lists them).

#include <string_view>
#include <thread>

namespace sigsci {

// Names a thread from the thread that started it, so the name is there before anything can look.
// Linux keeps at most 15 bytes; a longer name is cut there.
void name_thread(std::thread& thread, std::string_view name) noexcept;

}  // namespace sigsci
