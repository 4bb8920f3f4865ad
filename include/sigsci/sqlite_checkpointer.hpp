#pragma once
// Checkpoints an SQLite WAL on a thread and a connection of its own, so that the writer's commits
// do not stop while a checkpoint copies pages into the database file and syncs it. See
// sqlite_checkpointer.cpp and docs/spool.md.

#include <sqlite3.h>

#include <memory>
#include <string>

namespace sigsci {

class WalCheckpointer {
  public:
    // A checkpoint is asked for once the WAL holds this many frames (SQLite's own default for
    // its checkpoints), and the writer checkpoints by itself at `writer_frames` (this one has
    // fallen behind).
    static constexpr int request_frames = 1000;
    static constexpr int writer_frames = 4 * request_frames;

    // Opens its own connection to `path` through `vfs` (null: wal_buffer_vfs()); throws
    // SpoolError. A checkpoint that fails (not merely busy), on either thread, is logged as
    // `spool checkpoint failed` when the failures start, and `spool checkpoints succeed again`
    // when they end.
    explicit WalCheckpointer(const std::string& path, const char* vfs = nullptr);
    ~WalCheckpointer();  // finishes a checkpoint under way, then stops
    WalCheckpointer(const WalCheckpointer&) = delete;
    WalCheckpointer& operator=(const WalCheckpointer&) = delete;

    // Install on the writer's connection: sqlite3_wal_hook(db, &WalCheckpointer::wal_hook, this).
    // It replaces SQLite's automatic checkpoints there.
    static int wal_hook(void* checkpointer, sqlite3* db, const char* name, int frames);

    void request();  // cheap when one is already asked for, under way, or waiting for its last step

    // The writer calls this before each write transaction, on its own connection. After a round
    // of this thread's, it checkpoints the frames committed since (the last step), so that the
    // transaction starts the WAL again; otherwise it costs one atomic load.
    void before_transaction(sqlite3* writer);

    void wait_idle();  // until none is asked for or under way

    // Checkpoints that failed so far, on either thread; from any thread.
    std::uint64_t failures() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace sigsci
