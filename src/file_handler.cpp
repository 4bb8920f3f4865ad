#include "sigsci/file_handler.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "sigsci/handler_registry.hpp"
#include "sigsci/log.hpp"

namespace sigsci {

namespace {
int open_for_append(const std::filesystem::path& path) {
    return ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
}
}  // namespace

FileHandler::FileHandler(std::string name, std::filesystem::path path)
    : Handler(std::move(name)), path_(std::move(path)) {
    fd_ = open_for_append(path_);
    if (fd_ < 0) {
        throw std::runtime_error("handlers." + this->name() + ".path: cannot open " +
                                 path_.string() + ": " + std::strerror(errno));
    }
}

FileHandler::~FileHandler() {
    if (fd_ >= 0) ::close(fd_);
    if (const int fd = pending_fd_.load(); fd >= 0) ::close(fd);
}

std::string FileHandler::append(const std::string& text) {
    std::string error;
    std::lock_guard lock(mutex_);
    if (pending_fd_.load(std::memory_order_relaxed) >= 0) {
        ::close(fd_);
        fd_ = pending_fd_.exchange(-1);
    }
    std::size_t written = 0;
    while (written < text.size()) {
        const ssize_t n = ::write(fd_, text.data() + written, text.size() - written);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            error = "write " + path_.string() + ": " + std::strerror(n < 0 ? errno : EIO);
            break;
        }
        written += static_cast<std::size_t>(n);
    }
    // Half a line would corrupt the archive for every reader after it; take it back. Appends
    // go to the end under the lock, so the part written is the file's last `written` bytes.
    struct stat st {};
    if (!error.empty() && written > 0 &&
        (::fstat(fd_, &st) != 0 || st.st_size < static_cast<off_t>(written) ||
         ::ftruncate(fd_, st.st_size - static_cast<off_t>(written)) != 0)) {
        error += " (and could not cut back the partial line)";
    }
    return error;
}

void FileHandler::deliver(const EventPtr& event, DeliveryDone done) {
    auto error = append(archive_line(*event));
    done(error.empty() ? DeliveryOutcome{} : DeliveryOutcome{false, std::move(error)});
}

void FileHandler::deliver_batch(std::span<const EventPtr> events, BatchDone done) {
    std::string lines;
    for (const auto& event : events) lines += archive_line(*event);
    const auto error = append(lines);
    for (std::size_t i = 0; i < events.size(); ++i) {
        done(i, error.empty() ? DeliveryOutcome{} : DeliveryOutcome{false, error});
    }
}

void FileHandler::reopen() {
    const int fd = open_for_append(path_);
    if (fd < 0) {
        log::error(
            "reopen failed",
            {{"handler", name()}, {"path", path_.string()}, {"error", std::strerror(errno)}});
        return;  // keep writing to the old descriptor rather than lose events
    }
    std::unique_lock lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock()) {
        if (const int older = pending_fd_.exchange(fd); older >= 0) ::close(older);
        return;
    }
    if (const int older = pending_fd_.exchange(-1); older >= 0) ::close(older);
    ::close(fd_);
    fd_ = fd;
}

HandlerSpec parse_file_handler(const std::string& name, ConfigObject& cfg,
                               const ConfigContext& ctx) {
    std::filesystem::path path = cfg.require("path").as_nonempty_string();
    if (path.is_relative()) path = ctx.base_dir / path;
    cfg.finish();
    return HandlerSpec{name, "file", "path: " + path.string(),
                       [name, path] { return std::make_shared<FileHandler>(name, path); }};
}

}  // namespace sigsci
