#include "sigsci/sqlite_checkpointer.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#include "sigsci/log.hpp"
#include "sigsci/spool.hpp"
#include "sigsci/sqlite_wal_buffer.hpp"
#include "sigsci/threads.hpp"

// SQLite checkpoints a WAL by copying its frames into the database file and syncing that file;
// the WAL starts again from its beginning only when a write transaction begins after a
// checkpoint that copied every frame. Run by the writer (SQLite's automatic checkpoints), a
// checkpoint of 1,000 frames stopped every commit behind it for 4-8 ms on the benchmark machine.
//
// Here a connection of its own copies the frames while the writer goes on committing (SQLite
// lets one checkpointer run beside one writer), in passes until a pass finds little new, and
// syncs the database file. The writer, before its next transaction, checkpoints on its own
// connection what was committed meanwhile: a few frames and one sync. That transaction finds the
// WAL all copied and starts it again. So the writer waits only for that last step, and runs it
// at its own priority, with no lock between the two threads (an earlier version had this thread,
// at nice 10, take the step under a lock every write transaction held).
//
// If this thread falls behind (it runs at a lower priority), the writer checkpoints by itself at
// writer_frames, as SQLite would: the WAL stays bounded whatever happens here.

namespace sigsci {

namespace {

// A pass that copied fewer new frames than this is the last one before the writer is held.
constexpr int catch_up_frames = 256;
constexpr int max_free_passes = 3;

struct DbClose {
    void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};

// Busy and locked are the two checkpointers meeting (this thread and the writer): the other one
// does the work. Anything else is the disk or the file failing.
bool checkpoint_failed(int rc) {
    const int primary = rc & 0xff;
    return primary != SQLITE_OK && primary != SQLITE_BUSY && primary != SQLITE_LOCKED;
}

// Failed checkpoints, from both threads, logged when they start failing (and when the error
// changes), not each time: one line per outage, and one when checkpoints succeed again.
class CheckpointFailures {
  public:
    void failed(std::string_view step, std::string error) {
        total_.fetch_add(1, std::memory_order_relaxed);
        std::lock_guard lock(mutex_);
        failing_.store(true, std::memory_order_relaxed);
        ++count_;
        if (error == last_error_) return;
        log::error("spool checkpoint failed", {{"step", step}, {"error", error}});
        last_error_ = std::move(error);
    }

    void succeeded() {
        if (!failing_.load(std::memory_order_relaxed)) return;
        std::lock_guard lock(mutex_);
        if (count_ == 0) return;  // the other thread's success came first
        log::info("spool checkpoints succeed again", {{"failed", count_}});
        count_ = 0;
        last_error_.clear();
        failing_.store(false, std::memory_order_relaxed);
    }

    // Checks a checkpoint's result code on `db`'s connection.
    void check(std::string_view step, sqlite3* db, int rc) {
        if (!checkpoint_failed(rc)) {
            if (rc == SQLITE_OK) succeeded();
            return;
        }
        std::string error = sqlite3_errmsg(db);
        if (const int e = sqlite3_system_errno(db); e != 0)
            error += std::string(": ") + std::strerror(e);
        failed(step, std::move(error));
    }

    std::uint64_t total() const { return total_.load(std::memory_order_relaxed); }

    // Checks fdatasync's result; true when it succeeded.
    bool check_sync(int result) {
        if (result == 0) return true;
        failed("sync", std::strerror(errno));
        return false;
    }

  private:
    std::atomic<bool> failing_{false};     // so that success costs one load while all is well
    std::atomic<std::uint64_t> total_{0};  // every failure, for /metrics
    std::mutex mutex_;
    std::uint64_t count_ = 0;
    std::string last_error_;
};

}  // namespace

struct WalCheckpointer::Impl {
    Impl(const std::string& path, const char* vfs) {
        sqlite3* raw = nullptr;
        const int rc =
            sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                            vfs != nullptr ? vfs : wal_buffer_vfs());
        db.reset(raw);
        if (rc != SQLITE_OK) {
            throw SpoolError("spool " + path + ": open for checkpoints: " +
                             (raw ? sqlite3_errmsg(raw) : "out of memory"));
        }
        // FULL: a checkpoint that copied everything syncs the database file before the WAL can
        // start again (SQLite's rule, stated here rather than assumed from the default).
        sqlite3_exec(db.get(), "PRAGMA synchronous = FULL", nullptr, nullptr, nullptr);
        database_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        thread = std::thread([this] { run(); });
        name_thread(thread, "spool-checkpt");
    }

    ~Impl() {
        {
            std::lock_guard lock(mutex);
            stopping = true;
        }
        wake.notify_all();
        thread.join();
        if (database_fd >= 0) ::close(database_fd);
    }

    void run() {
        // Below the threads that answer requests: the copying can wait, the answers should not.
        ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
        run_as_background();
        std::unique_lock lock(mutex);
        for (;;) {
            wake.wait(lock, [&] { return stopping || requested; });
            if (stopping) return;
            running = true;
            requested = false;
            lock.unlock();
            const bool copied = checkpoint();
            lock.lock();
            running = false;
            // Until the writer has taken the last step, another round would copy the same frames.
            last_step_due.store(copied, std::memory_order_release);
            idle.notify_all();
        }
    }

    // True when the WAL's frames, all but the last few, are copied and synced.
    bool checkpoint() {
        int frames = 0;
        int copied = 0;
        for (int pass = 0, before = 0; pass < max_free_passes; ++pass) {
            const int rc = sqlite3_wal_checkpoint_v2(db.get(), nullptr, SQLITE_CHECKPOINT_PASSIVE,
                                                     &frames, &copied);
            if (rc != SQLITE_OK) {
                // Busy: the writer's own checkpoint holds the lock, and it does the work.
                failures.check("copy", db.get(), rc);
                return false;
            }
            const bool little_new = copied - before < catch_up_frames;
            before = copied;
            if (little_new) break;
        }
        // SQLite syncs the file after a pass only when no commit came in meanwhile, which under
        // load is rare: sync here either way, so that the last step, the writer's, syncs only
        // what it copies itself.
        if (database_fd < 0 || failures.check_sync(::fdatasync(database_fd))) failures.succeeded();
        return true;
    }

    CheckpointFailures failures;
    std::atomic<bool> last_step_due{false};
    std::unique_ptr<sqlite3, DbClose> db;
    int database_fd = -1;
    std::mutex mutex;
    std::condition_variable wake;
    std::condition_variable idle;
    bool stopping = false;
    bool requested = false;
    bool running = false;
    std::thread thread;
};

WalCheckpointer::WalCheckpointer(const std::string& path, const char* vfs)
    : impl_(std::make_unique<Impl>(path, vfs)) {}

WalCheckpointer::~WalCheckpointer() = default;

int WalCheckpointer::wal_hook(void* checkpointer, sqlite3* db, const char* name, int frames) {
    auto* self = static_cast<WalCheckpointer*>(checkpointer);  // null: no thread, the writer alone
    if (frames >= writer_frames) {
        // Like SQLite's own hook; busy (this thread is checkpointing) is fine.
        const int rc =
            sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
        if (self != nullptr) self->impl_->failures.check("writer", db, rc);
    } else if (frames >= request_frames && self != nullptr) {
        self->request();
    }
    return SQLITE_OK;
}

std::uint64_t WalCheckpointer::failures() const {
    return impl_->failures.total();
}

void WalCheckpointer::request() {
    {
        std::lock_guard lock(impl_->mutex);
        if (impl_->requested || impl_->running ||
            impl_->last_step_due.load(std::memory_order_acquire)) {
            return;
        }
        impl_->requested = true;
    }
    impl_->wake.notify_one();
}

void WalCheckpointer::before_transaction(sqlite3* writer) {
    if (!impl_->last_step_due.load(std::memory_order_acquire)) return;
    // Copies what was committed since this thread's last pass and syncs the database file (the
    // connection's synchronous setting, FULL or NORMAL, syncs it at checkpoints). A checkpoint
    // still running elsewhere makes this one busy, which is fine: the next transaction appends.
    impl_->failures.check(
        "last step", writer,
        sqlite3_wal_checkpoint_v2(writer, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr));
    impl_->last_step_due.store(false, std::memory_order_release);
}

void WalCheckpointer::wait_idle() {
    std::unique_lock lock(impl_->mutex);
    impl_->idle.wait(lock, [&] { return !impl_->requested && !impl_->running; });
}

}  // namespace sigsci
