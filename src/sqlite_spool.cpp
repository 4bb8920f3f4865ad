#include <sqlite3.h>

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "sigsci/clock.hpp"
#include "sigsci/event.hpp"
#include "sigsci/spool.hpp"
#include "sigsci/sqlite_checkpointer.hpp"
#include "sigsci/sqlite_wal_buffer.hpp"

namespace sigsci {

std::string_view to_string(DeliveryState state) {
    switch (state) {
        case DeliveryState::pending:
            return "pending";
        case DeliveryState::delivered:
            return "delivered";
        case DeliveryState::dead:
            return "dead";
    }
    return "pending";
}

namespace {

DeliveryState state_from(std::string_view s) {
    if (s == "delivered") return DeliveryState::delivered;
    if (s == "dead") return DeliveryState::dead;
    return DeliveryState::pending;
}

struct DbClose {
    void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
struct StmtFinalize {
    void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using Db = std::unique_ptr<sqlite3, DbClose>;
using Stmt = std::unique_ptr<sqlite3_stmt, StmtFinalize>;

// The schema. user_version tells a future version what it is opening.
constexpr const char* schema = R"sql(
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL,  -- unique by making (UUIDv7); not indexed, see find()
    received_at TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    endpoint    TEXT NOT NULL,
    type        TEXT NOT NULL,
    body        BLOB NOT NULL,
    body_hash   BLOB NOT NULL,
    handlers    TEXT NOT NULL DEFAULT '[]'  -- JSON array of the routed handlers' names
);
CREATE TABLE IF NOT EXISTS deliveries (
    event_seq       INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    handler         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    last_error      TEXT,
    PRIMARY KEY (event_seq, handler)
) WITHOUT ROWID;
-- Partial indexes: a delivery that is done leaves them, and nothing grows with delivered rows.
-- By handler first, so that the poller reads what is due for one handler without reading past
-- the rows of another that is down (see due()).
CREATE INDEX IF NOT EXISTS deliveries_pending_by_handler ON deliveries(handler, next_attempt_ms)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries(event_seq) WHERE state = 'dead';
-- Per handler: deliveries of events stored with deliveries_in_memory and seq < done_below are
-- finished; with no row, they were delivered (see spool.hpp).
CREATE TABLE IF NOT EXISTS progress (
    handler    TEXT PRIMARY KEY,
    done_below INTEGER NOT NULL
) WITHOUT ROWID;
-- Indexes of earlier versions.
DROP INDEX IF EXISTS deliveries_pending;
DROP INDEX IF EXISTS deliveries_due;
DROP INDEX IF EXISTS events_by_hash;
DROP INDEX IF EXISTS events_by_time;
)sql";

// Every delivery, with a row or implicit: what operators see. An event's routed handler with a
// progress mark and no row is delivered below the mark and pending at or above it.
constexpr const char* view = R"sql(
CREATE VIEW IF NOT EXISTS delivery_states AS
SELECT event_seq, handler, state, attempts, next_attempt_ms, last_error FROM deliveries
UNION ALL
SELECT e.seq, h.value,
       CASE WHEN e.seq < p.done_below THEN 'delivered' ELSE 'pending' END,
       CASE WHEN e.seq < p.done_below THEN 1 ELSE 0 END,
       e.received_ms, NULL
FROM events e, json_each(e.handlers) h JOIN progress p ON p.handler = h.value
WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.handler = h.value);
PRAGMA user_version = 2;
)sql";

// The handler names as a JSON array of strings (names are config keys: any UTF-8 text), into
// `out`, whose capacity is reused from one event to the next.
void json_names(const std::vector<std::string>& names, std::string& out) {
    out.assign(1, '[');
    for (const auto& n : names) {
        if (out.size() > 1) out += ',';
        append_json_string(out, n);
    }
    out += ']';
}

// The columns read_deliveries() expects. A macro so that each statement stays one literal (the
// statement cache is keyed by the literal's address).
#define SELECT_DELIVERIES                                                                    \
    "SELECT e.id, e.received_at, e.endpoint, e.type, d.handler, d.state, d.attempts, "       \
    "d.next_attempt_ms, COALESCE(d.last_error, '') FROM delivery_states d JOIN events e ON " \
    "e.seq = d.event_seq "

class SqliteSpool final : public Spool {
  public:
    SqliteSpool(const std::filesystem::path& path, const SpoolOptions& options)
        : path_(path.string()) {
        sqlite3* raw = nullptr;
        const int rc = sqlite3_open_v2(
            path_.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
            wal_buffer_vfs());
        db_.reset(raw);
        if (rc != SQLITE_OK) fail("open");
        sqlite3_busy_timeout(db_.get(), 10000);
        // WAL lets the CLI and the daemon's reader read while the writer writes; FULL makes
        // every commit durable before it returns, which is what a 200 promises.
        exec("PRAGMA journal_mode = WAL");
        set_synchronous(true);
        // Foreign keys are not enforced (SQLite's default): every statement that deletes events
        // deletes their deliveries' rows itself (prune, purge). Enforced, the schema's ON DELETE
        // CASCADE ran a program per deleted event: a third of pruning's CPU (docs/spool.md).
        // Debian builds SQLite with SECURE_DELETE, which writes zeros over every page a delete
        // frees: more for pruning to write, for nothing, as the WAL keeps the same bytes until it
        // is overwritten. FAST zeroes deleted content only in pages written anyway.
        exec("PRAGMA secure_delete = FAST");
        // Keep the WAL file from staying large after a burst: truncate it to 64 MiB at checkpoints.
        exec("PRAGMA journal_size_limit = 67108864");
        // One transaction, so that two processes opening an older spool at once migrate it once.
        in_transaction([&] {
            exec(schema);
            if (query_int(
                    "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'handlers'") ==
                0) {
                exec("ALTER TABLE events ADD COLUMN handlers TEXT NOT NULL DEFAULT '[]'");
            }
            exec(view);
        });
        if (options.background_checkpoints) {
            checkpointer_ = std::make_unique<WalCheckpointer>(path_);
            sqlite3_wal_hook(db_.get(), &WalCheckpointer::wal_hook, checkpointer_.get());
        }
        if (options.max_bytes > 0) {
            const auto page_size = query_int("PRAGMA page_size");
            const auto pages =
                std::max<std::int64_t>(1, static_cast<std::int64_t>(options.max_bytes) / page_size);
            exec("PRAGMA max_page_count = " + std::to_string(pages));
        }
    }

    std::vector<StoreOutcome> commit(std::span<const NewEvent> events,
                                     std::span<const DeliveryUpdate> updates,
                                     std::span<const ProgressMark> marks) override {
        std::vector<StoreOutcome> out;
        out.reserve(events.size());
        // New events are what a 200 promises: their commit waits for the disk. Outcomes alone
        // need not: losing one to a power cut means a delivery runs again (at-least-once), and
        // the next events' commit makes them durable too, as WAL commits are ordered.
        set_synchronous(!events.empty());
        std::vector<std::string> new_marks;  // handlers given their first mark here
        in_transaction([&] {
            for (const auto& e : events) out.push_back(store_one(e, new_marks));
            for (const auto& u : updates) update_one(u);
            for (const auto& m : marks) {
                auto& s = stmt(
                    "INSERT INTO progress (handler, done_below) VALUES (?1, ?2) ON CONFLICT "
                    "(handler) DO UPDATE SET done_below = MAX(done_below, excluded.done_below)");
                bind_static(s, 1, m.handler);
                bind(s, 2, m.done_below);
                step(s);
            }
        });
        marked_.insert(new_marks.begin(), new_marks.end());
        return out;
    }

    std::vector<RecentBody> recent_bodies(std::int64_t since_ms, std::size_t limit) override {
        // Newest first along seq (arrival order), stopping at the window's start.
        auto& s = stmt("SELECT body_hash, id, received_ms FROM events ORDER BY seq DESC LIMIT ?");
        bind(s, 1, static_cast<std::int64_t>(limit));
        std::vector<RecentBody> out;
        while (step(s)) {
            const auto received = column_int(s, 2);
            if (received < since_ms) break;
            out.push_back({column_text(s, 0), column_text(s, 1), received});
        }
        sqlite3_reset(s.get());
        return out;
    }

    std::size_t resume_all(std::int64_t now_ms) override {
        std::size_t n = 0;
        in_transaction([&] {
            // What the previous run was delivering from memory when it stopped gets a row. Only
            // events at or above the lowest mark can have such a delivery.
            auto& rows = stmt(
                "INSERT INTO deliveries (event_seq, handler, state, attempts, next_attempt_ms) "
                "SELECT e.seq, h.value, 'pending', 0, ?1 FROM events e, json_each(e.handlers) h "
                "JOIN progress p ON p.handler = h.value WHERE e.seq >= (SELECT MIN(done_below) "
                "FROM progress) AND e.seq >= p.done_below AND NOT EXISTS (SELECT 1 FROM "
                "deliveries d WHERE d.event_seq = e.seq AND d.handler = h.value)");
            bind(rows, 1, now_ms);
            step(rows);
            n = static_cast<std::size_t>(sqlite3_changes(db_.get()));
            step(
                stmt("UPDATE progress SET done_below = (SELECT COALESCE(MAX(seq), 0) + 1 FROM "
                     "events)"));
            auto& s = stmt(
                "UPDATE deliveries SET next_attempt_ms = ?1 WHERE state = 'pending' AND "
                "next_attempt_ms > ?1");
            bind(s, 1, now_ms);
            step(s);
            n += static_cast<std::size_t>(sqlite3_changes(db_.get()));
        });
        return n;
    }

    // Handler by handler: the handlers with pending rows are found by one index seek each, and
    // their due rows are read in due order, one cursor each, merged until `limit`; so a pass
    // reads about as many rows as it returns. One query over all handlers read past every row
    // of a skipped handler instead: 51-55 ms a pass with 136,625 rows of a `forward` handler
    // whose destination was down, four passes a second.
    std::vector<DueDelivery> due(std::int64_t now_ms, std::size_t limit,
                                 const std::vector<std::string>& skip) override {
        struct Cursor {
            Stmt* s;
            std::string handler;
            bool live = false;
            std::int64_t due_ms() const { return column_int(*s, 3); }
            std::int64_t seq() const { return column_int(*s, 0); }
        };
        std::vector<Cursor> cursors;
        std::map<std::string, Stmt, std::less<>> kept;  // this pass's handlers' statements
        auto& first = stmt("SELECT MIN(handler) FROM deliveries WHERE state = 'pending'");
        auto& next =
            stmt("SELECT MIN(handler) FROM deliveries WHERE state = 'pending' AND handler > ?");
        for (auto* s = &first;; s = &next) {
            const bool found = step(*s) && sqlite3_column_type(s->get(), 0) != SQLITE_NULL;
            auto handler = found ? column_text(*s, 0) : std::string();
            sqlite3_reset(s->get());
            if (!found) break;
            bind(next, 1, handler);
            if (std::find(skip.begin(), skip.end(), handler) != skip.end()) continue;
            // One statement per handler, as the cursors are open together.
            auto node = due_stmts_.extract(handler);
            if (node.empty()) {
                kept.emplace(handler,
                             prepare("SELECT d.event_seq, e.id, d.attempts, d.next_attempt_ms FROM "
                                     "deliveries d JOIN events e ON e.seq = d.event_seq WHERE "
                                     "d.state = 'pending' AND d.handler = ?1 AND "
                                     "d.next_attempt_ms <= ?2 ORDER BY d.next_attempt_ms"));
            } else {
                kept.insert(std::move(node));
            }
            auto& st = kept.find(handler)->second;
            sqlite3_reset(st.get());
            bind(st, 1, handler);
            bind(st, 2, now_ms);
            cursors.push_back({&st, std::move(handler)});
        }
        due_stmts_ = std::move(kept);  // handlers with no pending row no longer keep one
        std::vector<DueDelivery> out;
        try {
            for (auto& c : cursors) c.live = step(*c.s);
            // Oldest due first across handlers, as one query over all of them gave them.
            const auto before = [](const Cursor& a, const Cursor& b) {
                if (a.due_ms() != b.due_ms()) return a.due_ms() < b.due_ms();
                if (a.seq() != b.seq()) return a.seq() < b.seq();
                return a.handler < b.handler;
            };
            while (out.size() < limit) {
                Cursor* best = nullptr;
                for (auto& c : cursors) {
                    if (c.live && (!best || before(c, *best))) best = &c;
                }
                if (!best) break;
                out.push_back({best->seq(), column_text(*best->s, 1), best->handler,
                               static_cast<int>(column_int(*best->s, 2))});
                best->live = step(*best->s);
            }
        } catch (...) {
            for (auto& c : cursors) sqlite3_reset(c.s->get());
            throw;
        }
        for (auto& c : cursors) sqlite3_reset(c.s->get());  // ends the read
        return out;
    }

    std::optional<StoredEvent> load_if_due(const DueDelivery& d, std::int64_t now_ms) override {
        // One statement, so one snapshot and one read transaction per delivery the poller starts.
        auto& s = stmt(
            "SELECT e.seq, e.id, e.received_at, e.received_ms, e.endpoint, e.type, e.body FROM "
            "deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.event_seq = ? AND "
            "d.handler = ? AND d.state = 'pending' AND d.attempts = ? AND d.next_attempt_ms <= ?");
        bind(s, 1, d.seq);
        bind(s, 2, d.handler);
        bind(s, 3, static_cast<std::int64_t>(d.attempts));
        bind(s, 4, now_ms);
        return read_event(s);
    }

    // There is no index on id: it cost about 1.5 µs of every event's insert (BM_SpoolCommit: 7.9
    // against 6.3 µs per event at batch 32), to serve an operator's lookup. An id's first 48 bits
    // are its event's received_ms, and seq follows receipt to within the writer's queue, so the
    // rows received within 100 ms of the id are found by binary search over seq and searched
    // first. When that misses (the clock stepped, an id not made by new_event_id, or a row that
    // waited longer), the whole table is scanned: the answer never rests on the order.
    std::optional<StoredEvent> find(const std::string& id) override {
        if (const auto ms = event_id_ms(id)) {
            constexpr std::int64_t near_ms = 100;
            const auto first = query_int("SELECT MIN(seq) FROM events");
            const auto end = query_int("SELECT MAX(seq) FROM events") + 1;
            const auto from = first_received_since(*ms - near_ms, first, end);
            const auto to = first_received_since(*ms + near_ms + 1, from, end);
            auto& s = stmt(
                "SELECT seq, id, received_at, received_ms, endpoint, type, body FROM events WHERE "
                "seq >= ?1 AND seq < ?2 AND id = ?3");
            bind(s, 1, from);
            bind(s, 2, to);
            bind(s, 3, id);
            if (auto e = read_event(s)) return e;
        }
        auto& s = stmt(
            "SELECT seq, id, received_at, received_ms, endpoint, type, body FROM events WHERE id = "
            "?");
        bind(s, 1, id);
        return read_event(s);
    }

    Backlog backlog() override {
        Backlog b;
        auto& s = stmt(
            "SELECT handler, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY handler");
        while (step(s)) {
            b.pending.emplace_back(column_text(s, 0), static_cast<std::uint64_t>(column_int(s, 1)));
        }
        b.dead = static_cast<std::uint64_t>(
            query_int("SELECT COUNT(*) FROM deliveries WHERE state = 'dead'"));
        return b;
    }

    SpoolStats stats() override {
        SpoolStats st;
        st.events = static_cast<std::uint64_t>(query_int("SELECT COUNT(*) FROM events"));
        auto& s = stmt(
            "SELECT handler, state, COUNT(*) FROM delivery_states GROUP BY handler, state "
            "ORDER BY handler");
        while (step(s)) {
            auto handler = column_text(s, 0);
            if (st.by_handler.empty() || st.by_handler.back().handler != handler)
                st.by_handler.push_back({std::move(handler)});
            auto& h = st.by_handler.back();
            const auto n = static_cast<std::uint64_t>(column_int(s, 2));
            switch (state_from(column_text(s, 1))) {
                case DeliveryState::pending:
                    h.pending += n;
                    st.pending += n;
                    break;
                case DeliveryState::delivered:
                    h.delivered += n;
                    st.delivered += n;
                    break;
                case DeliveryState::dead:
                    h.dead += n;
                    st.dead += n;
                    break;
            }
        }
        auto& o = stmt(
            "SELECT MIN(e.received_ms) FROM delivery_states d JOIN events e ON e.seq = "
            "d.event_seq WHERE d.state = 'pending'");
        if (step(o) && sqlite3_column_type(o.get(), 0) != SQLITE_NULL)
            st.oldest_pending_ms = column_int(o, 0);
        sqlite3_reset(o.get());
        return st;
    }

    PruneSlice prune(std::int64_t before_ms, std::int64_t now_ms, std::int64_t from_seq,
                     std::size_t limit) override {
        PruneSlice out;
        out.next_seq = from_seq;
        // A prune lost to a power cut is done again: it need not wait for the disk.
        set_synchronous(false);
        in_transaction([&] {
            auto& s = stmt(
                // Not through delivery_states: SQLite cannot push a correlated constraint into
                // that view and would build all of it for every slice (0.12 s at 119k events,
                // against 2 ms this way). The second test is the view's rule for a delivery
                // without a row.
                "SELECT seq, received_ms, NOT EXISTS (SELECT 1 FROM deliveries d WHERE "
                "d.event_seq = e.seq AND d.state != 'delivered') AND NOT EXISTS (SELECT 1 FROM "
                "json_each(e.handlers) h JOIN progress p ON p.handler = h.value WHERE e.seq >= "
                "p.done_below AND NOT EXISTS (SELECT 1 FROM deliveries d2 WHERE d2.event_seq = "
                "e.seq AND d2.handler = h.value)) FROM events e WHERE seq >= ?1 ORDER BY seq "
                "LIMIT ?2");
            bind(s, 1, from_seq);
            bind(s, 2, static_cast<std::int64_t>(limit));
            std::string victims = "[";
            std::size_t read = 0;
            while (step(s)) {
                ++read;
                const auto seq = column_int(s, 0);
                const auto received_ms = column_int(s, 1);
                if (received_ms >= before_ms && !out.kept_for_time) out.kept_for_time = seq;
                if (received_ms >= before_ms && received_ms <= now_ms) {
                    out.done = true;
                    break;
                }
                out.next_seq = seq + 1;
                if (received_ms >= before_ms || column_int(s, 2) == 0) continue;
                if (victims.size() > 1) victims += ',';
                victims += std::to_string(seq);
            }
            sqlite3_reset(s.get());
            if (read < limit) out.done = true;
            if (victims.size() == 1) return;
            victims += ']';
            // The deliveries' rows go explicitly: foreign keys are not enforced (see the
            // constructor), so nothing cascades.
            auto& rows =
                stmt("DELETE FROM deliveries WHERE event_seq IN (SELECT value FROM json_each(?1))");
            bind(rows, 1, victims);
            step(rows);
            auto& events =
                stmt("DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?1))");
            bind(events, 1, victims);
            step(events);
            out.deleted = static_cast<std::size_t>(sqlite3_changes(db_.get()));
        });
        return out;
    }

    std::vector<StoredDelivery> list(std::optional<DeliveryState> state, const std::string& type,
                                     std::size_t limit) override {
        if (state == DeliveryState::dead) {
            // Only a row can be dead: its partial index is read, not the whole view.
            auto& s = stmt(
                "SELECT e.id, e.received_at, e.endpoint, e.type, d.handler, d.state, d.attempts, "
                "d.next_attempt_ms, COALESCE(d.last_error, '') FROM deliveries d JOIN events e ON "
                "e.seq = d.event_seq WHERE d.state = 'dead' AND (?1 = '' OR e.type = ?1) ORDER BY "
                "d.event_seq, d.handler LIMIT ?2");
            bind(s, 1, type);
            bind(s, 2, static_cast<std::int64_t>(limit));
            return read_deliveries(s);
        }
        auto& s = stmt(SELECT_DELIVERIES
                       "WHERE (?1 IS NULL OR d.state = ?1) AND (?2 = '' OR e.type = ?2) "
                       "ORDER BY e.seq, d.handler LIMIT ?3");
        if (state) {
            bind(s, 1, std::string(to_string(*state)));
        } else {
            sqlite3_bind_null(s.get(), 1);
        }
        bind(s, 2, type);
        bind(s, 3, static_cast<std::int64_t>(limit));
        return read_deliveries(s);
    }

    std::vector<StoredDelivery> deliveries_of(const std::string& event_id) override {
        const auto event = find(event_id);
        if (!event) return {};
        // By seq, a bound value SQLite pushes into the view (by id it would build all of it).
        auto& s = stmt(SELECT_DELIVERIES "WHERE d.event_seq = ? ORDER BY d.handler");
        bind(s, 1, event->seq);
        return read_deliveries(s);
    }

    std::size_t retry_dead(const std::string& event_id, std::int64_t now_ms) override {
        std::int64_t seq = 0;  // 0: every dead delivery
        if (!event_id.empty()) {
            const auto event = find(event_id);
            if (!event) return 0;
            seq = event->seq;
        }
        auto& s = stmt(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_ms = ?1 "
            "WHERE state = 'dead' AND (?2 = 0 OR event_seq = ?2)");
        bind(s, 1, now_ms);
        bind(s, 2, seq);
        step(s);
        return static_cast<std::size_t>(sqlite3_changes(db_.get()));
    }

    std::uint64_t checkpoint_failures() const override {
        return checkpointer_ ? checkpointer_->failures() : 0;
    }

    std::size_t purge(std::int64_t before_ms) override {
        std::size_t deleted = 0;
        in_transaction([&] {
            auto& rows = stmt(
                "DELETE FROM deliveries WHERE event_seq IN (SELECT seq FROM events WHERE "
                "received_ms < ?1)");
            bind(rows, 1, before_ms);
            step(rows);
            auto& events = stmt("DELETE FROM events WHERE received_ms < ?1");
            bind(events, 1, before_ms);
            step(events);
            deleted = static_cast<std::size_t>(sqlite3_changes(db_.get()));
        });
        return deleted;
    }

  private:
    [[noreturn]] void fail(const std::string& what) const {
        throw SpoolError("spool " + path_ + ": " + what + ": " +
                         (db_ ? sqlite3_errmsg(db_.get()) : "out of memory"));
    }

    // Between commits of new events (FULL) and of outcomes alone (NORMAL); both prepared once.
    void set_synchronous(bool full) {
        if (synchronous_full_ == full) return;
        step(full ? stmt("PRAGMA synchronous = FULL") : stmt("PRAGMA synchronous = NORMAL"));
        synchronous_full_ = full;
    }

    // Runs `body` in one IMMEDIATE transaction: committed when it returns, rolled back when it
    // throws. BEGIN and COMMIT are prepared once, like every statement of the hot path.
    template <class Body>
    void in_transaction(Body&& body) {
        if (checkpointer_) checkpointer_->before_transaction(db_.get());
        step(stmt("BEGIN IMMEDIATE"));
        try {
            body();
            step(stmt("COMMIT"));
        } catch (...) {
            sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
            throw;
        }
    }

    void exec(const std::string& sql) {
        char* err = nullptr;
        if (sqlite3_exec(db_.get(), sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
            const std::string msg = err ? err : "unknown error";
            sqlite3_free(err);
            throw SpoolError("spool " + path_ + ": " + msg);
        }
    }

    Stmt prepare(const char* sql) {
        sqlite3_stmt* raw = nullptr;
        if (sqlite3_prepare_v3(db_.get(), sql, -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr) !=
            SQLITE_OK) {
            fail("prepare");
        }
        return Stmt(raw);
    }

    // Statements are prepared once per connection and reset after each use.
    Stmt& stmt(const char* sql) {
        auto it = stmts_.find(sql);
        if (it == stmts_.end()) it = stmts_.emplace(sql, prepare(sql)).first;
        sqlite3_reset(it->second.get());
        sqlite3_clear_bindings(it->second.get());
        return it->second;
    }

    // The first seq in [lo, hi) from which received_ms is at least `ms`, as a binary search over
    // seq finds it (exact when received_ms rises with seq), or hi when no row is that recent.
    std::int64_t first_received_since(std::int64_t ms, std::int64_t lo, std::int64_t hi) {
        auto& s = stmt("SELECT seq, received_ms FROM events WHERE seq >= ? ORDER BY seq LIMIT 1");
        while (lo < hi) {
            const auto mid = lo + (hi - lo) / 2;
            sqlite3_reset(s.get());
            bind(s, 1, mid);
            if (!step(s)) {  // rows past mid went while we searched
                hi = mid;
                continue;
            }
            if (column_int(s, 1) < ms) {
                lo = column_int(s, 0) + 1;
            } else {
                hi = mid;
            }
        }
        sqlite3_reset(s.get());
        return lo;
    }

    std::int64_t query_int(const char* sql) {
        auto& s = stmt(sql);
        const std::int64_t v = step(s) ? column_int(s, 0) : 0;
        sqlite3_reset(s.get());
        return v;
    }

    void bind(Stmt& s, int i, std::int64_t v) { sqlite3_bind_int64(s.get(), i, v); }
    void bind(Stmt& s, int i, const std::string& v) {
        sqlite3_bind_text(s.get(), i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    }
    void bind_blob(Stmt& s, int i, const std::string& v) {
        sqlite3_bind_blob(s.get(), i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    }
    // Not copied: `v` must outlive the step. stmt() clears the bindings before the next use.
    void bind_static(Stmt& s, int i, const std::string& v) {
        sqlite3_bind_text(s.get(), i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
    }
    void bind_static_blob(Stmt& s, int i, const std::string& v) {
        sqlite3_bind_blob(s.get(), i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
    }

    // true: a row is ready; false: done. Throws on error.
    bool step(Stmt& s) {
        const int rc = sqlite3_step(s.get());
        if (rc == SQLITE_ROW) return true;
        if (rc == SQLITE_DONE) return false;
        fail("step");
    }

    static std::int64_t column_int(Stmt& s, int i) { return sqlite3_column_int64(s.get(), i); }
    static std::string column_text(Stmt& s, int i) {
        const auto* p = sqlite3_column_blob(s.get(), i);
        return p ? std::string(static_cast<const char*>(p),
                               static_cast<std::size_t>(sqlite3_column_bytes(s.get(), i)))
                 : std::string();
    }

    std::optional<StoredEvent> read_event(Stmt& s) {
        if (!step(s)) return std::nullopt;
        StoredEvent e{column_int(s, 0),  column_text(s, 1), column_text(s, 2), column_int(s, 3),
                      column_text(s, 4), column_text(s, 5), column_text(s, 6)};
        sqlite3_reset(s.get());
        return e;
    }

    std::vector<StoredDelivery> read_deliveries(Stmt& s) {
        std::vector<StoredDelivery> out;
        while (step(s)) {
            out.push_back({column_text(s, 0), column_text(s, 1), column_text(s, 2),
                           column_text(s, 3), column_text(s, 4), state_from(column_text(s, 5)),
                           static_cast<int>(column_int(s, 6)), column_int(s, 7),
                           column_text(s, 8)});
        }
        return out;
    }

    StoreOutcome store_one(const NewEvent& e, std::vector<std::string>& new_marks) {
        auto& s = stmt(
            "INSERT INTO events (id, received_at, received_ms, endpoint, type, body, body_hash, "
            "handlers, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
        json_names(e.handlers, names_);
        bind_static(s, 1, e.id);
        bind_static(s, 2, e.received_at);
        bind(s, 3, e.received_ms);
        bind_static(s, 4, e.endpoint);
        bind_static(s, 5, e.type);
        bind_static_blob(s, 6, *e.body);  // the body is the bulk of the row: not copied again
        bind_static_blob(s, 7, e.body_hash);
        bind_static(s, 8, names_);
        const auto seq = next_seq();
        bind(s, 9, seq);
        step(s);
        const auto with_row = [&](const std::string& h) {
            return !e.deliveries_in_memory ||
                   std::find(e.handlers_with_rows.begin(), e.handlers_with_rows.end(), h) !=
                       e.handlers_with_rows.end();
        };
        for (const auto& h : e.handlers) {
            if (with_row(h)) {
                auto& ins = stmt(
                    "INSERT INTO deliveries (event_seq, handler, state, attempts, "
                    "next_attempt_ms) VALUES (?, ?, 'pending', 0, ?)");
                bind(ins, 1, seq);
                bind_static(ins, 2, h);
                bind(ins, 3, e.received_ms);
                step(ins);
                continue;
            }
            // No row; the handler needs a mark, or its implicit deliveries would not exist.
            if (marked_.contains(h) ||
                std::find(new_marks.begin(), new_marks.end(), h) != new_marks.end()) {
                continue;
            }
            auto& m = stmt(
                "INSERT INTO progress (handler, done_below) VALUES (?, ?) ON CONFLICT DO "
                "NOTHING");
            bind_static(m, 1, h);
            bind(m, 2, seq);
            step(m);
            new_marks.push_back(h);
        }
        return {e.id, seq};
    }

    // The seq of the next event: above every seq this connection has given out, and above every
    // event and progress mark in the file when it stored its first. Left to SQLite, a new rowid
    // is the largest in the table plus one, so once pruning (a quiet day) or `spool purge` had
    // deleted the newest events, a new event took a seq below a handler's mark again: it counted
    // as delivered before it was, and a crash lost its delivery (resume_all() gave it no row).
    std::int64_t next_seq() {
        if (!last_seq_) {
            last_seq_ = query_int(
                "SELECT MAX((SELECT COALESCE(MAX(seq), 0) FROM events), (SELECT "
                "COALESCE(MAX(done_below), 1) - 1 FROM progress))");
        }
        return ++*last_seq_;
    }

    void update_one(const DeliveryUpdate& u) {
        // A delivery run from memory has no row until its first failure. An event purged
        // meanwhile gets none.
        auto& s = stmt(
            "INSERT INTO deliveries (state, attempts, next_attempt_ms, last_error, event_seq, "
            "handler) SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM events WHERE seq "
            "= ?5) ON CONFLICT (event_seq, handler) DO UPDATE SET state = excluded.state, attempts "
            "= excluded.attempts, next_attempt_ms = excluded.next_attempt_ms, last_error = "
            "excluded.last_error");
        bind(s, 1, std::string(to_string(u.state)));
        bind(s, 2, static_cast<std::int64_t>(u.attempts));
        bind(s, 3, u.next_attempt_ms);
        if (u.error.empty()) {
            sqlite3_bind_null(s.get(), 4);
        } else {
            bind(s, 4, u.error);
        }
        bind(s, 5, u.seq);
        bind(s, 6, u.handler);
        step(s);
    }

    std::string path_;
    std::optional<bool> synchronous_full_;
    Db db_;
    std::unordered_map<const char*, Stmt> stmts_;
    std::map<std::string, Stmt, std::less<>> due_stmts_;  // due()'s, by handler
    std::unordered_set<std::string> marked_;              // handlers known to have a progress row
    std::optional<std::int64_t> last_seq_;                // see next_seq()
    std::string names_;  // store_one's handler list, bound without a copy
    std::unique_ptr<WalCheckpointer> checkpointer_;  // declared after db_: stopped before it closes
};

}  // namespace

std::uint64_t Spool::Backlog::pending_total() const {
    std::uint64_t n = 0;
    for (const auto& [handler, count] : pending) n += count;
    return n;
}

std::unique_ptr<Spool> open_sqlite_spool(const std::filesystem::path& path,
                                         const SpoolOptions& options) {
    return std::make_unique<SqliteSpool>(path, options);
}

}  // namespace sigsci
