#pragma once
// Thread names, so that `top -H`, `ps -L` and /proc/PID/task/TID/comm show which of the daemon's
// threads is busy (docs/architecture.md lists them), and the scheduling of background threads.

#include <string_view>
#include <thread>

namespace sigsci {

// Names a thread from the thread that started it, so the name is there before anything can look.
// Linux keeps at most 15 bytes; a longer name is cut there.
void name_thread(std::thread& thread, std::string_view name) noexcept;

// Makes the calling thread background work for the kernel's scheduler (SCHED_BATCH): woken, it
// does not take the core from the thread that is running (the one answering requests, or the
// spool's writer), but runs when that one waits or its turn ends; it keeps its fair share of
// the CPU. A process it started would inherit the policy; the exec handler's commands are
// started by the handler reactor's thread, which keeps the usual one. False if the kernel
// refused, which leaves the thread as it was.
bool run_as_background() noexcept;

}  // namespace sigsci
