// The WAL-gathering VFS (src/sqlite_wal_buffer.cpp): whatever it holds back, a commit is whole in
// the WAL file once it returns, for a reader in this process and for a recovery after a kill.
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "sigsci/sqlite_wal_buffer.hpp"
#include "sqlite_test_db.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

using test::Db;

// 300 rows of 1 KB, then every row rewritten in the same transaction: with a cache of 10 pages
// SQLite spills frames before the commit and rewrites some of them in place (their checksums
// too), the paths where writes are not appends.
const char* spilling_transaction = R"sql(
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
INSERT INTO t (k, v) SELECT i, printf('%.1000c', 'a') FROM n;
UPDATE t SET v = printf('%.1000c', 'b') WHERE k <= 300;
COMMIT;
)sql";

TEST(WalBufferVfs, AReaderSeesEveryCommitOnceItReturns) {
    test::TempDir dir;
    // The reader (the default VFS, as the CLI and the poller read) makes the WAL and its first
    // frames, so the writer joins a WAL whose end it was not told: its first commit begins
    // with a write that is not an append.
    Db reader(dir / "db");
    ASSERT_TRUE(
        reader.exec("PRAGMA journal_mode = WAL; CREATE TABLE t (k INTEGER PRIMARY KEY, "
                    "v); INSERT INTO t (k, v) VALUES (1000, 'first');"))
        << reader.error;
    Db writer(dir / "db", wal_buffer_vfs());
    ASSERT_TRUE(writer.exec("PRAGMA synchronous = NORMAL; PRAGMA cache_size = 10;"))
        << writer.error;
    for (int i = 1; i <= 50; ++i) {
        ASSERT_TRUE(writer.exec("INSERT INTO t (k, v) VALUES (" + std::to_string(1000 + i) +
                                ", printf('%.3000c', 'x'))"))
            << writer.error;
        ASSERT_EQ(reader.text("SELECT COUNT(*) FROM t"), std::to_string(i + 1));
    }
    ASSERT_TRUE(writer.exec(spilling_transaction)) << writer.error;
    EXPECT_EQ(reader.text("SELECT COUNT(*) FROM t WHERE v = printf('%.1000c', 'b')"), "300");
    EXPECT_EQ(reader.text("PRAGMA integrity_check"), "ok");
}

TEST(WalBufferVfs, AProcessKilledAfterItsCommitsLosesNoneOfThem) {
    test::TempDir dir;
    const auto path = dir / "db";
    const pid_t child = fork();
    ASSERT_NE(child, -1);
    if (child == 0) {
        // No checkpoint and no close: what survives is what reached the WAL file.
        Db db(path, wal_buffer_vfs());
        const bool ok = db.exec(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; "
                            "PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = 10; "
                            "CREATE TABLE t (k INTEGER PRIMARY KEY, v);") &&
                        db.exec(spilling_transaction) &&
                        db.exec("INSERT INTO t (k, v) VALUES (5000, 'last')");
        if (!ok) _exit(1);
        ::kill(::getpid(), SIGKILL);
        _exit(2);
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;
    // Without the shared-memory index, the next open rebuilds it from the WAL, checking every
    // frame's checksum: a frame missing or stale there would end the log early.
    std::filesystem::remove(dir / "db-shm");
    Db db(path);
    EXPECT_EQ(db.text("SELECT COUNT(*) FROM t WHERE v = printf('%.1000c', 'b')"), "300");
    EXPECT_EQ(db.text("SELECT v FROM t WHERE k = 5000"), "last");
    EXPECT_EQ(db.text("PRAGMA integrity_check"), "ok");
}

}  // namespace
}  // namespace sigsci
