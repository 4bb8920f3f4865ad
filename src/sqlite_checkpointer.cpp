#include "sigsci/sqlite_checkpointer.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <condition_variable>
#include <thread>

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
// syncs the database file. Then it takes the writer's transaction mutex and checkpoints what was
// committed meanwhile: a few frames and one sync. The writer's next transaction finds the WAL
// all copied and starts it again. So the writer waits only for that last step.
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

}  // namespace

struct WalCheckpointer::Impl {
    Impl(const std::string& path, std::mutex& t) : transactions(t) {
        sqlite3* raw = nullptr;
        const int rc = sqlite3_open_v2(
            path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, wal_buffer_vfs());
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
        std::unique_lock lock(mutex);
        for (;;) {
            wake.wait(lock, [&] { return stopping || requested; });
            if (stopping) return;
            running = true;
            requested = false;
            lock.unlock();
            checkpoint();
            lock.lock();
            running = false;
            idle.notify_all();
        }
    }

    void checkpoint() {
        int frames = 0;
        int copied = 0;
        for (int pass = 0, before = 0; pass < max_free_passes; ++pass) {
            if (sqlite3_wal_checkpoint_v2(db.get(), nullptr, SQLITE_CHECKPOINT_PASSIVE, &frames,
                                          &copied) != SQLITE_OK) {
                return;  // e.g. the writer's own checkpoint holds the lock: it does the work
            }
            const bool little_new = copied - before < catch_up_frames;
            before = copied;
            if (little_new) break;
        }
        // SQLite syncs the file after a pass only when no commit came in meanwhile, which under
        // load is rare: sync here either way, so that the last step, under the writer's mutex,
        // syncs only what it copies itself.
        if (database_fd >= 0) ::fdatasync(database_fd);
        std::lock_guard writer(transactions);
        sqlite3_wal_checkpoint_v2(db.get(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    }

    std::mutex& transactions;
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

WalCheckpointer::WalCheckpointer(const std::string& path, std::mutex& transactions)
    : impl_(std::make_unique<Impl>(path, transactions)) {}

WalCheckpointer::~WalCheckpointer() = default;

int WalCheckpointer::wal_hook(void* checkpointer, sqlite3* db, const char* name, int frames) {
    if (frames >= writer_frames) {
        // Like SQLite's own hook; busy (this thread is checkpointing) is fine.
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    } else if (frames >= request_frames) {
        static_cast<WalCheckpointer*>(checkpointer)->request();
    }
    return SQLITE_OK;
}

void WalCheckpointer::request() {
    {
        std::lock_guard lock(impl_->mutex);
        if (impl_->requested || impl_->running) return;
        impl_->requested = true;
    }
    impl_->wake.notify_one();
}

void WalCheckpointer::wait_idle() {
    std::unique_lock lock(impl_->mutex);
    impl_->idle.wait(lock, [&] { return !impl_->requested && !impl_->running; });
}

}  // namespace sigsci
