// The background checkpointer (src/sqlite_checkpointer.cpp): it copies the writer's WAL into the
// database file so that the writer's next transaction starts the WAL again, and the writer
// checkpoints by itself when the WAL has grown past writer_frames.
#include "sigsci/sqlite_checkpointer.hpp"

#include <gtest/gtest.h>
#include <sched.h>
#include <sqlite3.h>

#include <sys/resource.h>

#include <atomic>
#include <filesystem>
#include <string>

#include "sigsci/log.hpp"
#include "sigsci/sqlite_wal_buffer.hpp"
#include "sqlite_test_db.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

using test::Db;

// Records the WAL's length after each commit (SQLite's hook argument), then hands the commit to
// the checkpointer's hook when there is one.
struct WalLength {
    static int hook(void* self, sqlite3* db, const char* name, int frames) {
        auto* me = static_cast<WalLength*>(self);
        me->frames = frames;
        return me->checkpointer ? WalCheckpointer::wal_hook(me->checkpointer, db, name, frames)
                                : SQLITE_OK;
    }
    WalCheckpointer* checkpointer = nullptr;
    int frames = 0;
};

// One transaction of 50 rows of 3 KB, about one page each.
std::string fifty_rows(int first) {
    return "WITH RECURSIVE n(i) AS (SELECT " + std::to_string(first) +
           " UNION ALL SELECT i + 1 FROM n WHERE i < " + std::to_string(first + 49) +
           ") INSERT INTO t (k, v) SELECT i, printf('%.3000c', 'x') FROM n";
}

// The default VFS, but writes to a main database file fail (as a full or failing disk would
// fail them) while `fail_database_writes` is set. Other files, the WAL among them, work.
std::atomic<bool> fail_database_writes{false};
const sqlite3_io_methods* real_methods = nullptr;
sqlite3_io_methods failing_methods{};
sqlite3_vfs failing_vfs{};

int failing_write(sqlite3_file* f, const void* data, int n, sqlite3_int64 offset) {
    if (fail_database_writes.load()) return SQLITE_IOERR_WRITE;
    return real_methods->xWrite(f, data, n, offset);
}

int failing_open(sqlite3_vfs*, const char* name, sqlite3_file* file, int flags, int* out_flags) {
    sqlite3_vfs* real = sqlite3_vfs_find(nullptr);
    const int rc = real->xOpen(real, name, file, flags, out_flags);
    if (rc == SQLITE_OK && (flags & SQLITE_OPEN_MAIN_DB) != 0 && file->pMethods != nullptr) {
        real_methods = file->pMethods;  // the same table for every file of the default VFS
        failing_methods = *real_methods;
        failing_methods.xWrite = failing_write;
        file->pMethods = &failing_methods;
    }
    return rc;
}

const char* failing_database_vfs() {
    if (failing_vfs.zName == nullptr) {
        failing_vfs = *sqlite3_vfs_find(nullptr);  // its other methods, and their app data
        failing_vfs.zName = "test-failing-database-writes";
        failing_vfs.pNext = nullptr;
        failing_vfs.xOpen = failing_open;
        sqlite3_vfs_register(&failing_vfs, 0);
    }
    return failing_vfs.zName;
}

void make_table(const std::filesystem::path& path) {
    Db setup(path);
    ASSERT_TRUE(setup.exec("PRAGMA journal_mode = WAL; CREATE TABLE t (k INTEGER PRIMARY KEY, v)"))
        << setup.error;
}

TEST(WalCheckpointer, CopiesTheWalSoThatTheWritersNextTransactionStartsItAgain) {
    test::TempDir dir;
    const auto path = dir / "db";
    make_table(path);
    Db writer(path, wal_buffer_vfs());
    WalCheckpointer checkpointer(path.string());
    WalLength wal{&checkpointer};
    sqlite3_wal_hook(writer.db, &WalLength::hook, &wal);

    int rows = 0;
    auto fill_to = [&](int frames) {
        while (wal.frames < frames) {
            checkpointer.before_transaction(writer.db);
            ASSERT_TRUE(writer.exec(fifty_rows(rows))) << writer.error;
            rows += 50;
            ASSERT_LT(rows, 10000) << "the WAL never reached " << frames << " frames";
        }
    };
    // A reader's snapshot from half way keeps the checkpointer's passes below it, as the
    // writer's commits during the passes do under load: the frames after it are left over.
    fill_to(WalCheckpointer::request_frames / 2);
    Db reader(path);
    ASSERT_TRUE(reader.exec("BEGIN; SELECT COUNT(*) FROM t;")) << reader.error;
    fill_to(WalCheckpointer::request_frames);
    checkpointer.wait_idle();  // the commit that reached request_frames asked for a round
    // Its passes copied the frames below the snapshot: about half the WAL's pages, 4 KiB each.
    EXPECT_GT(std::filesystem::file_size(path), WalCheckpointer::request_frames / 4 * 4096);
    ASSERT_TRUE(reader.exec("COMMIT")) << reader.error;

    // Without the last step, the next transaction appends to the WAL.
    ASSERT_TRUE(writer.exec("INSERT INTO t (k, v) VALUES (-2, 'before the last step')"))
        << writer.error;
    EXPECT_GT(wal.frames, WalCheckpointer::request_frames);
    // With it, the next transaction starts the WAL again: it had been copied whole.
    checkpointer.before_transaction(writer.db);
    ASSERT_TRUE(writer.exec("INSERT INTO t (k, v) VALUES (-1, 'after')")) << writer.error;
    EXPECT_LT(wal.frames, 10);
    EXPECT_EQ(reader.text("SELECT COUNT(*) FROM t"), std::to_string(rows + 2));
    EXPECT_EQ(reader.text("PRAGMA integrity_check"), "ok");
}

// Logs to `sink` until the end of the scope, however the test leaves it.
struct LogTo {
    explicit LogTo(std::shared_ptr<test::MemorySink> sink) {
        log::configure(log::Format::json, log::Level::info, std::move(sink));
    }
    ~LogTo() { log::configure(log::Format::json, log::Level::info); }
    LogTo(const LogTo&) = delete;
    LogTo& operator=(const LogTo&) = delete;
};

// A checkpoint that fails is logged when the failures start, not at every round, and again
// when checkpoints succeed; the WAL then starts again as usual. Each failure is counted too.
TEST(WalCheckpointer, FailuresAreLoggedWhenTheyStartAndWhenTheyEnd) {
    auto logs = std::make_shared<test::MemorySink>();
    const LogTo log_to(logs);
    test::TempDir dir;
    const auto path = dir / "db";
    make_table(path);
    Db writer(path, wal_buffer_vfs());
    WalCheckpointer checkpointer(path.string(), failing_database_vfs());
    WalLength wal{&checkpointer};
    sqlite3_wal_hook(writer.db, &WalLength::hook, &wal);
    const auto commit = [&](int first) {
        checkpointer.before_transaction(writer.db);
        ASSERT_TRUE(writer.exec(fifty_rows(first))) << writer.error;
        checkpointer.wait_idle();
    };

    fail_database_writes = true;
    int rows = 0;
    while (wal.frames < WalCheckpointer::request_frames) {
        commit(rows);  // the one that reaches request_frames asks for a round, which fails
        rows += 50;
        ASSERT_LT(rows, 10000);
    }
    commit(rows);  // and another, which fails too
    rows += 50;
    EXPECT_EQ(checkpointer.failures(), 2u);
    fail_database_writes = false;
    commit(rows);  // this round copies the WAL
    rows += 50;
    checkpointer.before_transaction(writer.db);  // the last step
    ASSERT_TRUE(writer.exec("INSERT INTO t (k, v) VALUES (-1, 'after')")) << writer.error;
    EXPECT_LT(wal.frames, 10) << "the WAL did not start again after the failures";
    EXPECT_EQ(checkpointer.failures(), 2u) << "a count of failures so far, for /metrics";

    int failed_lines = 0;
    Json recovered;
    for (const auto& line : logs->lines()) {
        auto record = Json::parse(line);
        if (record["msg"] == "spool checkpoint failed") {
            ++failed_lines;
            EXPECT_EQ(record["level"], "error");
            EXPECT_EQ(record["step"], "copy");
            EXPECT_NE(record["error"].get<std::string>().find("disk I/O error"), std::string::npos)
                << record["error"];
        }
        if (record["msg"] == "spool checkpoints succeed again") recovered = record;
    }
    EXPECT_EQ(failed_lines, 1);
    EXPECT_EQ(recovered["failed"], 2);
    Db reader(path);
    EXPECT_EQ(reader.text("SELECT COUNT(*) FROM t"), std::to_string(rows + 1));
    EXPECT_EQ(reader.text("PRAGMA integrity_check"), "ok");
}

// The copying is background work: nice 10, and SCHED_BATCH so that it does not take the core
// from the writer or the I/O thread when it wakes.
TEST(WalCheckpointer, RunsAsBackgroundWork) {
    test::TempDir dir;
    const auto path = dir / "db";
    make_table(path);
    WalCheckpointer checkpointer(path.string());
    checkpointer.request();
    checkpointer.wait_idle();  // its thread has run the round, so it has set itself up
    int found = 0;
    for (const auto& t : test::threads()) {
        if (t.name != "spool-checkpt") continue;
        ++found;
        EXPECT_EQ(::sched_getscheduler(t.id), SCHED_BATCH);
        EXPECT_EQ(::getpriority(PRIO_PROCESS, static_cast<id_t>(t.id)), 10);
    }
    EXPECT_EQ(found, 1);
}

TEST(WalCheckpointer, TheWriterCheckpointsByItselfAtWriterFrames) {
    test::TempDir dir;
    const auto path = dir / "db";
    make_table(path);
    Db writer(path, wal_buffer_vfs());
    WalLength wal;  // no checkpointer: SQLite's automatic checkpoints are off, as with one
    sqlite3_wal_hook(writer.db, &WalLength::hook, &wal);
    ASSERT_TRUE(writer.exec(fifty_rows(0))) << writer.error;
    ASSERT_TRUE(writer.exec(fifty_rows(50))) << writer.error;
    const int grown = wal.frames;
    ASSERT_GT(grown, 100);

    // Called as SQLite would after a commit that took the WAL to writer_frames (the argument
    // decides, not the WAL's real length): the writer checkpoints there and then.
    EXPECT_EQ(WalCheckpointer::wal_hook(nullptr, writer.db, "main", WalCheckpointer::writer_frames),
              SQLITE_OK);
    ASSERT_TRUE(writer.exec("INSERT INTO t (k, v) VALUES (-1, 'after')")) << writer.error;
    EXPECT_LT(wal.frames, 10) << "the WAL was not copied whole before this transaction";
    Db reader(path);
    EXPECT_EQ(reader.text("SELECT COUNT(*) FROM t"), "101");
}

}  // namespace
}  // namespace sigsci
