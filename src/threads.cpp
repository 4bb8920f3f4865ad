#include "sigsci/threads.hpp"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <array>

namespace sigsci {

void name_thread(std::thread& thread, std::string_view name) noexcept {
    std::array<char, 16> buffer{};  // the kernel's TASK_COMM_LEN, with the terminating NUL
    const auto n = std::min(name.size(), buffer.size() - 1);
    std::copy_n(name.data(), n, buffer.data());
    ::pthread_setname_np(thread.native_handle(), buffer.data());
}

bool run_as_background() noexcept {
    const sched_param param{};  // priority 0, the only one SCHED_BATCH has
    return ::sched_setscheduler(0, SCHED_BATCH, &param) == 0;
}

}  // namespace sigsci
