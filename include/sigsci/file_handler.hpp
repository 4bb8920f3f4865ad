#pragma once
#include <atomic>
#include <filesystem>
#include <mutex>

#include "sigsci/handler.hpp"

namespace sigsci {

// `file`: appends one compact JSON line per event. Each line goes out in one locked write to an
// O_APPEND descriptor, so lines are never torn or interleaved; a failed write is cut back off.
class FileHandler final : public Handler {
  public:
    // Appends `text` (whole lines) in one locked write; a failure cuts the file back. Returns the
    // error, empty on success.
    std::string append(const std::string& text);

  public:
    // Throws std::runtime_error when the file cannot be opened.
    FileHandler(std::string name, std::filesystem::path path);
    ~FileHandler() override;

    void deliver(const EventPtr& event, DeliveryDone done) override;
    // All the lines in one write: they succeed or fail together.
    void deliver_batch(std::span<const EventPtr> events, BatchDone done) override;
    // Opens the path again. A write in progress (one hung on a full pipe or a hung mount
    // included) is not waited for: the next write takes the new descriptor.
    void reopen() override;

    const std::filesystem::path& path() const { return path_; }

  private:
    std::filesystem::path path_;
    std::mutex mutex_;
    int fd_ = -1;
    std::atomic<int> pending_fd_{-1};  // reopened while a write held mutex_; the next one takes it
};

}  // namespace sigsci
