#include "sigsci/sqlite_wal_buffer.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

// SQLite appends a commit to the WAL as frames, each written with two xWrite calls: a 24-byte
// header, then the page (walWriteOneFrame in wal.c). On Linux each is a pwrite, so a commit of
// 14 frames is 28 system calls. This VFS passes every file through to the default VFS, except
// the WAL, whose contiguous writes it gathers in memory and writes as one.
//
// What keeps it safe, in the order SQLite does things:
// - Only appends are gathered: writes that start where the last one through this file ended
//   (after the 32-byte WAL header that begins a new WAL, or after the first write once the file
//   is open). Anything else, such as SQLite rewriting frame headers of the same transaction
//   (walRewriteChecksums), writes the buffer out first and then goes straight to the file.
// - Of those, only two shapes are held back: a frame's 24-byte header until its page follows,
//   and a whole frame that does not end a commit. A commit frame is the one whose header
//   carries the database size (bytes 4-7 non-zero; the WAL file format,
//   https://sqlite.org/fileformat2.html#walformat); it is the last frame of its commit, and the
//   buffer is written out inside the xWrite of its page, so a failure (a full disk) fails that
//   write and SQLite rolls the transaction back as it would without us. Once that xWrite
//   returns, nothing of the commit is held here: a process killed after it loses nothing that
//   an unbuffered write would have kept. A write of any other shape (say, a future SQLite
//   writing header and page at once) goes out at once: less gathered, never held.
// - SQLite publishes a commit to other connections (the WAL-index header) only after those
//   writes return, so a reader never sees a frame that is still in this buffer.
// - Anything that reads, syncs, truncates, sizes or closes the WAL writes the buffer out
//   first; so does a buffer over 1 MiB (a transaction that spills its cache before it commits,
//   whose frames no one reads before the commit).

namespace sigsci {
namespace {

constexpr std::size_t wal_header_bytes = 32;
constexpr std::size_t frame_header_bytes = 24;
constexpr std::size_t max_buffered = 1 << 20;
// The unix VFS writes at most 128 KiB - 1 bytes per call (seekAndWriteFd masks the length with
// 0x1ffff), so a larger buffer goes out in pieces of this size.
constexpr std::size_t max_write = 64 * 1024;

struct WalFile {
    sqlite3_file base;  // pMethods = wal_methods
    sqlite3_file* real;
    std::vector<unsigned char> buffer;
    sqlite3_int64 start = 0;    // file offset of buffer[0]
    sqlite3_int64 end = -1;     // where the last write through this file ended; -1: not known
    bool after_header = false;  // the last write was a frame header
    bool commit_frame = false;  // ...and its frame ends a commit
};

sqlite3_vfs* real_vfs = nullptr;
sqlite3_vfs wal_vfs{};
sqlite3_io_methods wal_methods{};

WalFile* as_wal(sqlite3_file* f) {
    return reinterpret_cast<WalFile*>(f);
}

int flush(WalFile* w) {
    int rc = SQLITE_OK;
    for (std::size_t at = 0; at < w->buffer.size() && rc == SQLITE_OK; at += max_write) {
        const auto n = std::min(max_write, w->buffer.size() - at);
        rc = w->real->pMethods->xWrite(w->real, w->buffer.data() + at, static_cast<int>(n),
                                       w->start + static_cast<sqlite3_int64>(at));
    }
    w->buffer.clear();
    if (rc != SQLITE_OK) w->end = -1;  // what is on disk is not known: gather nothing more
    return rc;
}

std::uint32_t be32(const unsigned char* p) {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
           std::uint32_t{p[3]};
}

int wal_close(sqlite3_file* f) {
    auto* w = as_wal(f);
    const int flushed = flush(w);
    const int rc = w->real->pMethods ? w->real->pMethods->xClose(w->real) : SQLITE_OK;
    w->~WalFile();
    return flushed != SQLITE_OK ? flushed : rc;
}

int wal_read(sqlite3_file* f, void* out, int n, sqlite3_int64 offset) {
    auto* w = as_wal(f);
    if (const int rc = flush(w); rc != SQLITE_OK) return rc;
    return w->real->pMethods->xRead(w->real, out, n, offset);
}

int wal_write(sqlite3_file* f, const void* data, int n, sqlite3_int64 offset) {
    auto* w = as_wal(f);
    const auto* bytes = static_cast<const unsigned char*>(data);
    const bool header = static_cast<std::size_t>(n) == frame_header_bytes;
    const bool page = !header && w->after_header && offset == w->end;
    const bool commit = page && w->commit_frame;
    w->after_header = header;
    w->commit_frame = header && be32(bytes + 4) != 0;
    if (offset == w->end) {
        try {
            if (w->buffer.empty()) w->start = offset;
            w->buffer.insert(w->buffer.end(), bytes, bytes + n);
            w->end = offset + n;
            // Held back: a frame's header until its page comes, and a whole frame that does
            // not end a commit. Anything else (the page that ends a commit, or a write of a
            // shape this does not know) goes out now.
            const bool hold = header || (page && !commit);
            return hold && w->buffer.size() < max_buffered ? SQLITE_OK : flush(w);
        } catch (const std::bad_alloc&) {
            // No memory to gather it (nothing was added): written straight, below.
        }
    }
    // Not an append (or no memory): in order, and straight to the file.
    int rc = flush(w);
    if (rc == SQLITE_OK) rc = w->real->pMethods->xWrite(w->real, data, n, offset);
    if (rc != SQLITE_OK) {
        w->end = -1;
    } else if (offset == 0 && static_cast<std::size_t>(n) == wal_header_bytes) {
        w->end = n;  // a new WAL: its frames follow, from the start
    } else {
        w->end = std::max(w->end, offset + n);
    }
    return rc;
}

int wal_truncate(sqlite3_file* f, sqlite3_int64 size) {
    auto* w = as_wal(f);
    if (const int rc = flush(w); rc != SQLITE_OK) return rc;
    w->end = -1;
    return w->real->pMethods->xTruncate(w->real, size);
}

int wal_sync(sqlite3_file* f, int flags) {
    auto* w = as_wal(f);
    if (const int rc = flush(w); rc != SQLITE_OK) return rc;
    return w->real->pMethods->xSync(w->real, flags);
}

int wal_file_size(sqlite3_file* f, sqlite3_int64* size) {
    auto* w = as_wal(f);
    if (const int rc = flush(w); rc != SQLITE_OK) return rc;
    return w->real->pMethods->xFileSize(w->real, size);
}

int wal_lock(sqlite3_file* f, int level) {
    auto* w = as_wal(f);
    return w->real->pMethods->xLock(w->real, level);
}

int wal_unlock(sqlite3_file* f, int level) {
    auto* w = as_wal(f);
    return w->real->pMethods->xUnlock(w->real, level);
}

int wal_check_reserved(sqlite3_file* f, int* out) {
    auto* w = as_wal(f);
    return w->real->pMethods->xCheckReservedLock(w->real, out);
}

int wal_file_control(sqlite3_file* f, int op, void* arg) {
    auto* w = as_wal(f);
    if (const int rc = flush(w); rc != SQLITE_OK) return rc;
    return w->real->pMethods->xFileControl(w->real, op, arg);
}

int wal_sector_size(sqlite3_file* f) {
    auto* w = as_wal(f);
    return w->real->pMethods->xSectorSize(w->real);
}

int wal_device_characteristics(sqlite3_file* f) {
    auto* w = as_wal(f);
    return w->real->pMethods->xDeviceCharacteristics(w->real);
}

// Every file but the WAL is the default VFS's own, opened in place: SQLite then calls its
// methods directly. The WAL is wrapped, with the default VFS's file right after the wrapper.
int vfs_open(sqlite3_vfs*, const char* name, sqlite3_file* file, int flags, int* out_flags) {
    if ((flags & SQLITE_OPEN_WAL) == 0) {
        return real_vfs->xOpen(real_vfs, name, file, flags, out_flags);
    }
    auto* w = new (file) WalFile{};
    w->real =
        reinterpret_cast<sqlite3_file*>(reinterpret_cast<unsigned char*>(file) + sizeof(WalFile));
    std::memset(w->real, 0, static_cast<std::size_t>(real_vfs->szOsFile));
    const int rc = real_vfs->xOpen(real_vfs, name, w->real, flags, out_flags);
    if (rc != SQLITE_OK) {
        // SQLite calls no method of a file whose open failed (it checks pMethods).
        w->~WalFile();
        file->pMethods = nullptr;
        return rc;
    }
    w->base.pMethods = &wal_methods;
    return SQLITE_OK;
}

int vfs_delete(sqlite3_vfs*, const char* name, int sync_dir) {
    return real_vfs->xDelete(real_vfs, name, sync_dir);
}
int vfs_access(sqlite3_vfs*, const char* name, int flags, int* out) {
    return real_vfs->xAccess(real_vfs, name, flags, out);
}
int vfs_full_pathname(sqlite3_vfs*, const char* name, int n, char* out) {
    return real_vfs->xFullPathname(real_vfs, name, n, out);
}
void* vfs_dl_open(sqlite3_vfs*, const char* name) {
    return real_vfs->xDlOpen(real_vfs, name);
}
void vfs_dl_error(sqlite3_vfs*, int n, char* out) {
    real_vfs->xDlError(real_vfs, n, out);
}
void (*vfs_dl_sym(sqlite3_vfs*, void* handle, const char* symbol))(void) {
    return real_vfs->xDlSym(real_vfs, handle, symbol);
}
void vfs_dl_close(sqlite3_vfs*, void* handle) {
    real_vfs->xDlClose(real_vfs, handle);
}
int vfs_randomness(sqlite3_vfs*, int n, char* out) {
    return real_vfs->xRandomness(real_vfs, n, out);
}
int vfs_sleep(sqlite3_vfs*, int microseconds) {
    return real_vfs->xSleep(real_vfs, microseconds);
}
int vfs_current_time(sqlite3_vfs*, double* out) {
    return real_vfs->xCurrentTime(real_vfs, out);
}
int vfs_get_last_error(sqlite3_vfs*, int n, char* out) {
    return real_vfs->xGetLastError ? real_vfs->xGetLastError(real_vfs, n, out) : 0;
}
int vfs_current_time_int64(sqlite3_vfs*, sqlite3_int64* out) {
    return real_vfs->xCurrentTimeInt64(real_vfs, out);
}

}  // namespace

const char* wal_buffer_vfs() {
    static std::once_flag once;
    std::call_once(once, [] {
        real_vfs = sqlite3_vfs_find(nullptr);
        wal_methods.iVersion = 1;  // the WAL has no shared memory and is never mapped
        wal_methods.xClose = wal_close;
        wal_methods.xRead = wal_read;
        wal_methods.xWrite = wal_write;
        wal_methods.xTruncate = wal_truncate;
        wal_methods.xSync = wal_sync;
        wal_methods.xFileSize = wal_file_size;
        wal_methods.xLock = wal_lock;
        wal_methods.xUnlock = wal_unlock;
        wal_methods.xCheckReservedLock = wal_check_reserved;
        wal_methods.xFileControl = wal_file_control;
        wal_methods.xSectorSize = wal_sector_size;
        wal_methods.xDeviceCharacteristics = wal_device_characteristics;
        wal_vfs.iVersion = 2;
        wal_vfs.szOsFile = static_cast<int>(sizeof(WalFile)) + real_vfs->szOsFile;
        wal_vfs.mxPathname = real_vfs->mxPathname;
        wal_vfs.zName = "sigsci-wal-buffer";
        wal_vfs.xOpen = vfs_open;
        wal_vfs.xDelete = vfs_delete;
        wal_vfs.xAccess = vfs_access;
        wal_vfs.xFullPathname = vfs_full_pathname;
        wal_vfs.xDlOpen = vfs_dl_open;
        wal_vfs.xDlError = vfs_dl_error;
        wal_vfs.xDlSym = vfs_dl_sym;
        wal_vfs.xDlClose = vfs_dl_close;
        wal_vfs.xRandomness = vfs_randomness;
        wal_vfs.xSleep = vfs_sleep;
        wal_vfs.xCurrentTime = vfs_current_time;
        wal_vfs.xGetLastError = vfs_get_last_error;
        wal_vfs.xCurrentTimeInt64 = vfs_current_time_int64;
        sqlite3_vfs_register(&wal_vfs, 0);
    });
    return wal_vfs.zName;
}

}  // namespace sigsci
