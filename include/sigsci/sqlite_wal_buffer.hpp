#pragma once
// An SQLite VFS that wraps the default one and writes a WAL commit with one system call instead
// of two per frame (a 24-byte header, then the page). See sqlite_wal_buffer.cpp.

namespace sigsci {

// Registers the VFS once (not as the default) and returns its name, for sqlite3_open_v2.
const char* wal_buffer_vfs();

}  // namespace sigsci
