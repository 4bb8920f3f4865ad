// The background checkpointer (src/sqlite_checkpointer.cpp): it copies the writer's WAL into the
// database file so that the writer's next transaction starts the WAL again, and the writer
// checkpoints by itself when the WAL has grown past writer_frames.
#include "sigsci/sqlite_checkpointer.hpp"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <filesystem>
#include <string>

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
