#pragma once
// A bare SQLite connection for tests of the spool's SQLite parts.

#include <sqlite3.h>

#include <filesystem>
#include <string>

namespace sigsci::test {

struct Db {
    explicit Db(const std::filesystem::path& path, const char* vfs = nullptr) {
        sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs);
    }
    ~Db() { sqlite3_close_v2(db); }
    Db(const Db&) = delete;
    Db& operator=(const Db&) = delete;

    // Runs `sql`; false (with the error in `error`) when SQLite refuses it.
    bool exec(const std::string& sql) {
        char* message = nullptr;
        const bool ok = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &message) == SQLITE_OK;
        error = message ? message : "";
        sqlite3_free(message);
        return ok;
    }
    std::string text(const std::string& sql) {
        sqlite3_stmt* s = nullptr;
        std::string out = "(error)";
        if (sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) == SQLITE_OK &&
            sqlite3_step(s) == SQLITE_ROW) {
            const auto* t = sqlite3_column_text(s, 0);
            out = t ? reinterpret_cast<const char*>(t) : "";
        }
        sqlite3_finalize(s);
        return out;
    }

    sqlite3* db = nullptr;
    std::string error;
};

}  // namespace sigsci::test
