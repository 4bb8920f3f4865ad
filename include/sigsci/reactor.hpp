#pragma once
// One process-wide I/O thread for handlers that wait on the outside world (exec children,
// forward connections), so no thread blocks per delivery. It lives as long as the process:
// handlers come and go with reloads, and the last one to go may be finishing on this thread.
namespace boost::asio {
class io_context;
}

namespace sigsci {

boost::asio::io_context& handler_reactor();

}  // namespace sigsci
