#include "sigsci/spool_sink.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>

#include "sigsci/clock.hpp"
#include "sigsci/completion_batch.hpp"
#include "sigsci/log.hpp"
#include "sigsci/metrics.hpp"
#include "sigsci/threads.hpp"

namespace sigsci {

namespace {

using Clock = std::chrono::system_clock;

// The daemon's claim on its spool: an flock on `<spool>-lock`, held while the sink lives, and
// released by the kernel however the process ends. A second daemon given the same spool stops
// here, before resume_all() would give rows to the first one's running deliveries (which then
// ran twice) and before two writers numbered events over each other. The `spool` commands do
// not take it. Not SQLite's file or its -shm: closing any descriptor of a file drops the
// process's POSIX locks on it, SQLite's own included.
class OwnerLock {
  public:
    explicit OwnerLock(const std::filesystem::path& spool) {
        const auto path = spool.string() + "-lock";
        fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd_ < 0) {
            throw SpoolError("spool " + spool.string() + ": cannot open " + path + ": " +
                             std::strerror(errno));
        }
        if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
            const int err = errno;
            std::string holder;
            char buf[32];
            const auto n = ::pread(fd_, buf, sizeof buf - 1, 0);
            for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; ++i) holder += buf[i];
            ::close(fd_);
            if (err == EWOULDBLOCK) {
                throw SpoolError("spool " + spool.string() +
                                 " is in use by another sigsci-webhookd" +
                                 (holder.empty() ? "" : " (pid " + holder + ")") +
                                 "; each daemon needs a spool of its own");
            }
            throw SpoolError("spool " + spool.string() + ": cannot lock " + path + ": " +
                             std::strerror(err));
        }
        // The holder's pid, for the error above; a failure to write it changes nothing else.
        const auto pid = std::to_string(::getpid()) + "\n";
        if (::ftruncate(fd_, 0) == 0) {
            [[maybe_unused]] const auto written = ::pwrite(fd_, pid.data(), pid.size(), 0);
        }
    }
    ~OwnerLock() { ::close(fd_); }
    OwnerLock(const OwnerLock&) = delete;
    OwnerLock& operator=(const OwnerLock&) = delete;

  private:
    int fd_ = -1;
};

constexpr std::size_t max_in_flight = SpoolSink::max_in_flight;
// A poller that filled every free slot looks again once this many are free, so that catching up
// on a backlog starts deliveries by the hundred rather than one pass per freed slot.
constexpr std::size_t refill_slots = max_in_flight / 8;
// A handler that ran all it may is looked at again once an eighth of that is free.
constexpr std::size_t refill_share = 8;
constexpr auto stats_interval = std::chrono::seconds(2);
// ...or this many times as long as the last count took: counting the rows of a long outage
// (about 0.5 µs a row) takes the poller at most 2 % of its time.
constexpr int stats_cost_factor = 50;
constexpr auto stats_log_interval = std::chrono::seconds(60);
constexpr auto failed_commit_backoff = std::chrono::milliseconds(1000);
// Pruning reads this many events per slice, one slice between two commits, so that a commit
// waits for one slice at most, not for a whole round (docs/spool.md).
constexpr std::size_t prune_slice = 1000;
// Duplicate detection remembers at most this many bodies (about 100 bytes each).
constexpr std::size_t max_recent_bodies = 100000;

}  // namespace

std::string body_hash(std::string_view endpoint, std::string_view body) {
    // The algorithm is fetched once and the context kept per thread: OpenSSL 3 looks an
    // algorithm up by name on every EVP_sha256() init otherwise.
    static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    thread_local const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(
        EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    std::string out(32, '\0');
    unsigned int len = 0;
    if (!sha256 || !ctx || EVP_DigestInit_ex(ctx.get(), sha256, nullptr) != 1 ||
        EVP_DigestUpdate(ctx.get(), endpoint.data(), endpoint.size()) != 1 ||
        EVP_DigestUpdate(ctx.get(), "", 1) != 1 ||
        EVP_DigestUpdate(ctx.get(), body.data(), body.size()) != 1 ||
        EVP_DigestFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len) != 1) {
        throw std::runtime_error("SHA-256 failed inside OpenSSL");
    }
    return out;
}

EventPtr restore_event(const StoredEvent& stored) {
    auto envelope = parse_envelope(stored.body);
    if (!envelope) return nullptr;
    auto event = std::make_shared<Event>();
    event->id = stored.id;
    event->received_at = stored.received_at;
    event->endpoint = stored.endpoint;
    event->body = stored.body;
    event->envelope = std::move(envelope).value();
    return event;
}

// Hashes of recently stored bodies, for answering a resent body with its original id. Kept in
// memory by the writer thread: as an SQLite index on random hashes it cost more than the rest of
// the insert, since every insert dirtied another page. Capped; the oldest go first.
class RecentBodies {
  public:
    explicit RecentBodies(std::size_t cap) : cap_(cap) {}

    std::optional<std::string> find(const std::string& hash, std::int64_t since_ms) const {
        const auto it = map_.find(hash);
        if (it == map_.end() || it->second.received_ms < since_ms) return std::nullopt;
        return it->second.id;
    }

    void add(const std::string& hash, const std::string& id, std::int64_t received_ms) {
        map_[hash] = {id, received_ms};
        order_.emplace_back(received_ms, hash);
        while (order_.size() > cap_) evict_front();
    }

    // Drops what is older than the window, so memory follows the window, not the cap.
    void expire(std::int64_t since_ms) {
        while (!order_.empty() && order_.front().first < since_ms) evict_front();
    }

  private:
    struct Entry {
        std::string id;
        std::int64_t received_ms;
    };

    void evict_front() {
        const auto& [received, hash] = order_.front();
        const auto it = map_.find(hash);
        // A hash seen again later has a newer entry; only its own, oldest record goes.
        if (it != map_.end() && it->second.received_ms == received) map_.erase(it);
        order_.pop_front();
    }

    std::size_t cap_;
    std::unordered_map<std::string, Entry> map_;
    std::deque<std::pair<std::int64_t, std::string>> order_;
};

struct SpoolSink::Impl : std::enable_shared_from_this<Impl> {
    struct StoreRequest {
        NewEvent row;
        EventPtr event;
        std::vector<HandlerPtr> handlers;
        // `handlers` are claimed for delivery from memory right after the commit; the names of
        // any that were running all they may are in row.handlers_with_rows.
        bool fast = false;
        SubmitDone done;
        // What its deliveries from memory count in running_bytes: the body once per handler.
        std::size_t bytes_in_memory() const { return handlers.size() * event->body.size(); }
    };
    struct OutcomeRequest {
        DeliveryUpdate update;
        std::string event_id;
        // Run from memory (an event stored with deliveries_in_memory, first attempt): a success
        // moves the handler's progress mark instead of writing a row.
        bool in_memory = false;
        std::size_t bytes = 0;  // the event's body, counted in running_bytes while it ran
        // Writes the `delivery` line once the outcome is committed, so the log never reports a
        // state the spool does not hold yet.
        std::function<void()> log;
    };
    using Claim = std::pair<std::string, std::string>;  // (event id, handler)

    Impl(SpoolConfig c, unsigned threads, PendingLimits pending, HandlerLookup l, Metrics* m,
         std::chrono::milliseconds poll, std::size_t max_bytes, std::chrono::milliseconds prune)
        : config(std::move(c)),
          owner(config.path),
          writer_db(open_sqlite_spool(
              config.path, {.max_bytes = config.max_bytes, .background_checkpoints = true})),
          reader_db(open_sqlite_spool(config.path)),
          pool(threads),
          pending_limits(pending),
          lookup(std::move(l)),
          metrics(m),
          poll_interval(poll),
          max_running_bytes(max_bytes),
          prune_interval(prune),
          rng(std::random_device{}()) {}

    SpoolConfig config;
    OwnerLock owner;  // taken before the spool is opened, released after it is closed
    // The writer thread's; stats() also reads its checkpoint_failures().
    std::unique_ptr<Spool> writer_db;
    std::unique_ptr<Spool> reader_db;  // used only by the poller thread
    DeliveryPool pool;
    PendingLimits pending_limits;  // guarded by mutex
    HandlerLookup lookup;
    Metrics* const metrics;  // may be null
    const std::chrono::milliseconds poll_interval;
    const std::size_t max_running_bytes;
    const std::chrono::milliseconds prune_interval;

    mutable std::mutex mutex;
    std::condition_variable writer_cv;
    std::condition_variable poller_cv;
    std::condition_variable idle_cv;
    std::vector<StoreRequest> stores;     // waiting for the next commit
    std::uint64_t stores_bytes = 0;       // their events' bodies
    std::deque<OutcomeRequest> outcomes;  // waiting for the next commit
    // Deliveries running in this process: those the poller started, by (event id, handler), so
    // that it never starts one twice; those run from memory after their commit, only counted
    // (they have no row the poller could find).
    std::set<Claim> claims;
    std::size_t running_from_memory = 0;
    // Per handler, deliveries of both kinds, and how many it may run (Handler::max_in_flight).
    struct Running {
        std::size_t count = 0;
        std::size_t from_memory = 0;  // of `count`: those with no row (not in `counted`)
        std::size_t limit = max_in_flight;
    };
    std::map<std::string, Running, std::less<>> running_by_handler;
    std::size_t running_bytes = 0;  // their events' bodies, one per delivery
    // stop() has begun: submit() refuses new events, but until `stopping` deliveries still
    // start, those the poller finds due in the spool included (events beyond max_in_flight), so
    // that the drain period delivers what is due rather than leave it for the next start.
    bool draining = false;
    bool drain_poll_wanted = false;   // stop() asks the poller for a pass now
    std::uint64_t passes = 0;         // poller passes begun
    std::uint64_t finished_pass = 0;  // the latest pass ended
    std::uint64_t clear_pass = 0;     // the latest pass that found nothing due left to start
    bool stopping = false;
    // Stopped with a delivery that never returned (a hung handler): the writer commits what it
    // has and ends without waiting for it.
    bool abandoned = false;
    bool writer_waiting = false;  // wake it only then: a busy writer takes the queue anyway
    // Due deliveries wait in the spool for free slots (a poller pass filled them all, or events
    // beyond max_in_flight were stored with rows): wake the poller when some free up.
    bool starved = false;
    // Handlers running all they may at the last pass, whose deliveries may wait in the spool.
    std::set<std::string, std::less<>> capped;
    std::size_t waiting_bytes = 0;  // the body that ended the last pass for want of running_bytes
    std::int64_t next_retry_ms = INT64_MAX;  // earliest retry this process scheduled
    // Commits of new events or of outcomes: wait_idle()'s sign that something moved on.
    std::uint64_t commits = 0;
    std::mt19937_64 rng;  // guarded by mutex

    RecentBodies recent{max_recent_bodies};  // writer thread only

    // Writer thread only: per handler, the seqs of deliveries running from memory (stored with
    // deliveries_in_memory) whose outcome is not committed yet. A handler's progress mark is the
    // lowest of them, or past the last stored event when there are none.
    std::map<std::string, std::set<std::int64_t>, std::less<>> outstanding;
    std::map<std::string, std::int64_t, std::less<>> marks_written;
    std::int64_t last_seq = 0;
    // Writer thread only: where the next round of pruning starts. Every event below it that is
    // still there waits for a delivery, and only a committed outcome can end that (the commit
    // lowers it, lower_prune_from()); so a round does not read again, every minute, the events
    // kept for a handler that is down or dead-lettered.
    std::int64_t prune_from = 0;

    // Pending rows by handler and dead ones, under mutex, as of the poller's last count (every
    // 2 s or less often). The deliveries running from memory, which have no row, are added live
    // by stats().
    Spool::Backlog counted;

    std::thread writer;
    std::thread poller;

    std::size_t running() const { return claims.size() + running_from_memory; }  // under mutex
    // Under mutex: whether `handler` may run one more delivery (Handler::max_in_flight).
    bool handler_has_slot(std::string_view handler) const {
        const auto it = running_by_handler.find(handler);
        return it == running_by_handler.end() || it->second.count < it->second.limit;
    }
    // Under mutex: a delivery of `handler` (null: no longer configured) starts, from memory
    // (right after its commit) or from a row (the poller).
    void count_started(std::string_view name, const Handler* handler, bool in_memory) {
        auto it = running_by_handler.find(name);
        if (it == running_by_handler.end())
            it = running_by_handler.emplace(std::string(name), Running{}).first;
        ++it->second.count;
        if (in_memory) ++it->second.from_memory;
        it->second.limit = std::clamp<std::size_t>(
            handler ? handler->max_in_flight() : max_in_flight, 1, max_in_flight);
    }
    // Under mutex: a delivery of `handler` ended.
    void count_ended(std::string_view name, bool in_memory) {
        const auto it = running_by_handler.find(name);
        if (it == running_by_handler.end()) return;
        if (in_memory) --it->second.from_memory;
        if (--it->second.count == 0) running_by_handler.erase(it);
    }
    // Under mutex: deliveries wait in the spool, and enough slots and bytes are free for the
    // poller's next pass (the body that ended its last pass among them), or enough of the share
    // of a handler that had run all of it.
    bool refill_due() const {
        if (starved && running() + refill_slots <= max_in_flight &&
            running_bytes <= max_running_bytes - max_running_bytes / 8 &&
            bytes_free(waiting_bytes)) {
            return true;
        }
        return std::any_of(capped.begin(), capped.end(), [&](const std::string& h) {
            const auto it = running_by_handler.find(h);
            return it == running_by_handler.end() ||
                   it->second.count + it->second.limit / refill_share <= it->second.limit;
        });
    }
    // Under mutex: whether deliveries holding `bytes` more may start (one always may).
    bool bytes_free(std::size_t bytes) const {
        return running_bytes == 0 ||
               (running_bytes <= max_running_bytes && bytes <= max_running_bytes - running_bytes);
    }
    bool done_running() const { return running() == 0 || abandoned; }  // under mutex

    // The receipt time from which a body counts as a duplicate.
    std::int64_t duplicates_since() const {
        return now_unix_ms() -
               std::chrono::duration_cast<std::chrono::milliseconds>(config.duplicate_window)
                   .count();
    }

    // ---- writer: group commit -------------------------------------------------------------

    void writer_loop() {
        auto next_prune = Clock::now();
        Pruning pruning;
        for (;;) {
            std::vector<StoreRequest> batch;
            std::vector<OutcomeRequest> updates;
            {
                std::unique_lock lock(mutex);
                // A round of pruning is left for the next start once the daemon stops.
                if (draining) drop_pruning(pruning);
                writer_waiting = true;
                if (draining) idle_cv.notify_all();  // stop() waits for the writer to be idle
                const auto wanted = [&] {
                    return !stores.empty() || !outcomes.empty() || (stopping && done_running());
                };
                // While a round of pruning runs, a slice follows each commit without a wait.
                if (!pruning.active) writer_cv.wait_until(lock, next_prune, wanted);
                writer_waiting = false;
                if (stores.empty() && outcomes.empty() && stopping && done_running()) break;
                batch.swap(stores);
                stores_bytes = 0;
                updates.assign(std::make_move_iterator(outcomes.begin()),
                               std::make_move_iterator(outcomes.end()));
                outcomes.clear();
            }
            if (!batch.empty() || !updates.empty()) commit_batch(batch, updates);
            if (!pruning.active && Clock::now() >= next_prune) start_pruning(pruning);
            if (pruning.active && !prune_one_slice(pruning))
                next_prune = Clock::now() + prune_interval;
        }
        std::lock_guard lock(mutex);
        idle_cv.notify_all();
    }

    // What the writer decided for one request of a batch.
    struct Decision {
        std::string duplicate_of;   // non-empty: answer duplicate with this id
        bool within_batch = false;  // ...of an event in this same batch, so it needs its commit
        std::int64_t seq = 0;       // when stored
    };

    void commit_batch(std::vector<StoreRequest>& batch, std::vector<OutcomeRequest>& updates) {
        const bool dedupe = config.duplicate_window.count() > 0;
        const auto since = duplicates_since();
        std::vector<Decision> decisions(batch.size());
        std::vector<NewEvent> rows;
        std::vector<std::size_t> stored_index;                  // batch index of each row
        std::unordered_map<std::string, std::string> in_batch;  // body hash -> id
        rows.reserve(batch.size());
        for (std::size_t i = 0; i < batch.size(); ++i) {
            auto& row = batch[i].row;
            if (dedupe) {
                if (auto original = recent.find(row.body_hash, since)) {
                    decisions[i].duplicate_of = *original;
                    continue;
                }
                if (const auto it = in_batch.find(row.body_hash); it != in_batch.end()) {
                    decisions[i] = {it->second, true, 0};
                    continue;
                }
                in_batch.emplace(row.body_hash, row.id);
            }
            stored_index.push_back(i);
            rows.push_back(std::move(row));
        }
        std::vector<DeliveryUpdate> ups;
        ups.reserve(updates.size());
        // Outcomes of deliveries run from memory leave `outstanding` now; a success needs no
        // row, only the mark below. Put back if nothing is committed.
        std::vector<std::pair<std::string, std::int64_t>> resolved;
        for (const auto& u : updates) {
            if (u.in_memory) {
                resolved.emplace_back(u.update.handler, u.update.seq);
                if (const auto it = outstanding.find(u.update.handler); it != outstanding.end())
                    it->second.erase(u.update.seq);
                if (u.update.state == DeliveryState::delivered) continue;
            }
            ups.push_back(u.update);
        }
        const auto marks = progress_marks();
        bool outcomes_committed = false;

        std::string error;
        try {
            const auto started = std::chrono::steady_clock::now();
            const auto stored = writer_db->commit(rows, ups, marks);
            if (metrics && !rows.empty()) {
                metrics->spool_commit(
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - started)
                        .count(),
                    rows.size());
            }
            for (std::size_t k = 0; k < stored.size(); ++k) {
                decisions[stored_index[k]].seq = stored[k].seq;
                last_seq = std::max(last_seq, stored[k].seq);
                if (dedupe) recent.add(rows[k].body_hash, rows[k].id, rows[k].received_ms);
            }
            outcomes_committed = true;
        } catch (const SpoolError& e) {
            error = e.what();
        }
        if (!error.empty() && !rows.empty() && (!ups.empty() || !marks.empty())) {
            // The new events may be what failed (a full disk); outcomes must still be recorded,
            // or the deliveries behind them would be run again.
            try {
                writer_db->commit({}, ups, marks);
                outcomes_committed = true;
            } catch (const SpoolError&) {
            }
        }
        if (outcomes_committed) {
            lower_prune_from(ups, marks);
            for (const auto& m : marks) marks_written[m.handler] = m.done_below;
        } else {
            for (const auto& [handler, seq] : resolved) outstanding[handler].insert(seq);
        }
        if (!error.empty()) {
            log::error("spool write failed",
                       {{"error", error},
                        {"events", rows.size()},
                        {"updates", outcomes_committed ? 0 : updates.size()}});
        }
        // Handlers that were running all they may got rows: the poller starts those once they
        // have room again.
        std::set<std::string, std::less<>> waiting_for_room;
        if (error.empty()) {
            for (const auto& row : rows)
                waiting_for_room.insert(row.handlers_with_rows.begin(),
                                        row.handlers_with_rows.end());
        }
        finish_stores(batch, decisions, error, waiting_for_room);
        finish_outcomes(updates, outcomes_committed);
        if (!error.empty()) {
            // Back off before the next try, so a full disk does not become a busy loop.
            std::unique_lock lock(mutex);
            writer_cv.wait_for(lock, failed_commit_backoff,
                               [&] { return stopping && done_running(); });
        }
    }

    // The marks that moved since they were last written.
    std::vector<ProgressMark> progress_marks() const {
        std::vector<ProgressMark> out;
        for (const auto& [handler, seqs] : outstanding) {
            const auto mark = seqs.empty() ? last_seq + 1 : *seqs.begin();
            const auto it = marks_written.find(handler);
            if (it == marks_written.end() || it->second < mark) out.push_back({handler, mark});
        }
        return out;
    }

    // Deliveries of one handler started together (one pool job): a commit's first attempts,
    // run from memory, or what one poller pass found due.
    struct DeliveryGroup {
        HandlerPtr handler;
        bool in_memory = true;
        std::vector<EventPtr> events;
        std::vector<std::int64_t> seqs;
        std::vector<int> attempts;
        void add(EventPtr event, std::int64_t seq, int attempt) {
            events.push_back(std::move(event));
            seqs.push_back(seq);
            attempts.push_back(attempt);
        }
    };

    void finish_stores(std::vector<StoreRequest>& batch, const std::vector<Decision>& decisions,
                       const std::string& error,
                       const std::set<std::string, std::less<>>& waiting_for_room) {
        // The answers below are handed to their threads together, when this returns.
        const CompletionBatch answers;
        bool stopping_now;
        {
            std::lock_guard lock(mutex);
            stopping_now = stopping;
        }
        std::vector<bool> answered(batch.size(), false);
        bool spooled = false;  // stored with delivery rows: the poller's to start
        std::map<const Handler*, DeliveryGroup> by_handler;
        for (std::size_t i = 0; i < batch.size(); ++i) {
            auto& r = batch[i];
            const auto& d = decisions[i];
            const bool duplicate = !d.duplicate_of.empty() && (error.empty() || !d.within_batch);
            const bool failed = !duplicate && !error.empty();
            if (r.fast && (failed || duplicate)) release_claims(r);
            if (failed) {
                r.done({SubmitResult::Status::failed, r.event->id, error});
                answered[i] = true;
                continue;
            }
            if (duplicate) {
                r.done({SubmitResult::Status::duplicate, d.duplicate_of, {}});
                answered[i] = true;
                continue;
            }
            // Start (or hand back) the deliveries before answering: the answer may be what a
            // shutdown waits for, and a started delivery is one the drain then waits for.
            if (!r.fast && !r.handlers.empty()) spooled = true;
            if (r.fast) {
                // Outstanding until its outcome is committed; one handed back stays so, which
                // holds the mark below it until the next start gives it a row.
                for (const auto& h : r.handlers) outstanding[h->name()].insert(d.seq);
                if (stopping_now) {
                    release_claims(r);  // stored and pending: delivered after the next start
                } else {
                    for (const auto& h : r.handlers) {
                        auto& group = by_handler[h.get()];
                        if (!group.handler) group.handler = h;
                        group.add(r.event, d.seq, 1);
                    }
                }
            }
        }
        // One pool job per handler for the whole batch, started before any answer goes out.
        for (auto& [raw, group] : by_handler) start_deliveries(std::move(group));
        for (std::size_t i = 0; i < batch.size(); ++i) {
            auto& r = batch[i];
            if (!answered[i]) r.done({SubmitResult::Status::accepted, r.event->id, {}});
        }
        std::lock_guard lock(mutex);
        ++commits;
        // They wait for free slots, as a pass that filled every slot leaves its rest, or for
        // room in their handler, as those of a handler a pass found full do. Not a pass per
        // commit: it would read past all of a hung handler's rows each time.
        if (spooled) starved = true;
        capped.insert(waiting_for_room.begin(), waiting_for_room.end());
        if ((spooled || !waiting_for_room.empty()) && refill_due()) poller_cv.notify_all();
        idle_cv.notify_all();
    }

    void finish_outcomes(const std::vector<OutcomeRequest>& updates, bool committed) {
        if (committed) {
            for (const auto& u : updates) {
                if (u.log) u.log();
            }
        }
        std::lock_guard lock(mutex);
        if (!committed && !stopping) {
            // Keep the claims and try the same updates again with the next commit.
            for (auto it = updates.rbegin(); it != updates.rend(); ++it) outcomes.push_front(*it);
            return;
        }
        if (!committed) {
            log::error(
                "spool: delivery outcomes not recorded at shutdown; those deliveries will run "
                "again",
                {{"updates", updates.size()}});
        }
        if (committed) ++commits;  // deliveries the poller started between two looks ended
        bool earlier_retry = false;
        for (const auto& u : updates) {
            if (u.in_memory) {
                --running_from_memory;
            } else {
                claims.erase({u.event_id, u.update.handler});
            }
            count_ended(u.update.handler, u.in_memory);
            running_bytes -= u.bytes;
            if (u.update.state == DeliveryState::pending &&
                u.update.next_attempt_ms < next_retry_ms) {
                next_retry_ms = u.update.next_attempt_ms;
                earlier_retry = true;
            }
        }
        // Waking the poller costs a query; only the free slots it waits for or a sooner retry
        // are worth it.
        if (refill_due() || earlier_retry) poller_cv.notify_all();
        idle_cv.notify_all();
        writer_cv.notify_all();
    }

    void release_claims(const StoreRequest& r) {
        std::lock_guard lock(mutex);
        running_from_memory -= r.handlers.size();
        for (const auto& h : r.handlers) count_ended(h->name(), true);
        running_bytes -= r.bytes_in_memory();
        idle_cv.notify_all();
    }

    // A round of pruning: slices from `prune_from` until one finds nothing more to read.
    struct Pruning {
        bool active = false;
        std::int64_t before_ms = 0;
        std::int64_t now_ms = 0;
        std::int64_t from_seq = 0;  // where the round started
        std::int64_t next_seq = 0;
        std::size_t deleted = 0;
        std::optional<std::int64_t> kept_for_time;  // the first event kept for its receipt time
    };

    void start_pruning(Pruning& p) {
        recent.expire(duplicates_since());
        const auto now = now_unix_ms();
        const auto retention =
            std::chrono::duration_cast<std::chrono::milliseconds>(config.retention).count();
        p = Pruning{true, now - retention, now, prune_from, prune_from, 0, std::nullopt};
        // From here on, prune_from collects what the round's commits make prunable behind it.
        prune_from = std::numeric_limits<std::int64_t>::max();
    }

    // A round that ends before it is done (the daemon drains, or a slice failed) leaves the next
    // one to start where it started.
    void drop_pruning(Pruning& p) {
        if (!p.active) return;
        prune_from = std::min(prune_from, p.from_seq);
        p.active = false;
    }

    // One slice; false once the round is over.
    bool prune_one_slice(Pruning& p) {
        try {
            const auto slice = writer_db->prune(p.before_ms, p.now_ms, p.next_seq, prune_slice);
            p.deleted += slice.deleted;
            p.next_seq = slice.next_seq;
            if (!p.kept_for_time) p.kept_for_time = slice.kept_for_time;
            if (!slice.done) return true;
            if (p.deleted > 0) log::info("spool pruned", {{"events", p.deleted}});
            // Before the first event kept for its time, every event left waits for a delivery.
            prune_from = std::min(prune_from, p.kept_for_time.value_or(p.next_seq));
            p.active = false;
        } catch (const SpoolError& e) {
            log::error("spool prune failed", {{"error", e.what()}});
            drop_pruning(p);
        }
        return false;
    }

    // What a commit of outcomes makes prunable: a delivery's row that is now delivered, and the
    // events a handler's progress mark passes (from where it was). Called before marks_written
    // takes the new marks.
    void lower_prune_from(const std::vector<DeliveryUpdate>& ups,
                          const std::vector<ProgressMark>& marks) {
        for (const auto& u : ups) {
            if (u.state == DeliveryState::delivered) prune_from = std::min(prune_from, u.seq);
        }
        for (const auto& m : marks) {
            const auto it = marks_written.find(m.handler);
            prune_from = std::min(prune_from, it == marks_written.end() ? 0 : it->second);
        }
    }

    // ---- deliveries -------------------------------------------------------------------------

    // A group's deliveries as one pool job (a single one as a job of its own).
    void start_deliveries(DeliveryGroup group) {
        if (group.events.size() == 1) {
            start_delivery(group.events.front(), group.seqs.front(), group.handler,
                           group.attempts.front(), group.in_memory);
            return;
        }
        auto self = shared_from_this();
        const std::string name = group.handler->name();
        // Copied out first: the callback takes `group` itself.
        auto events = group.events;
        auto handler = group.handler;
        pool.run_batch(std::move(events), std::move(handler),
                       [self, group = std::move(group), name](std::size_t i,
                                                              DeliveryOutcome outcome, double ms) {
                           self->record_outcome(group.events[i], group.seqs[i], name,
                                                group.attempts[i], std::move(outcome), ms,
                                                group.in_memory);
                       });
    }

    void start_delivery(const EventPtr& event, std::int64_t seq, const HandlerPtr& handler,
                        int attempt, bool in_memory) {
        auto self = shared_from_this();
        const std::string name = handler->name();
        pool.run(event, handler,
                 [self, event, seq, name, attempt, in_memory](DeliveryOutcome outcome, double ms) {
                     self->record_outcome(event, seq, name, attempt, std::move(outcome), ms,
                                          in_memory);
                 });
    }

    void record_outcome(const EventPtr& event, std::int64_t seq, const std::string& handler,
                        int attempt, DeliveryOutcome outcome, double ms, bool in_memory) {
        DeliveryUpdate u{seq, handler, DeliveryState::delivered, attempt, 0, outcome.error};
        std::string status = "delivered";
        log::Fields extra;  // null (no allocation) unless a retry is scheduled
        if (!outcome.ok && (outcome.permanent || attempt >= config.retry.max_attempts)) {
            u.state = DeliveryState::dead;
            status = "dead";
        } else if (!outcome.ok) {
            double r;
            {
                std::lock_guard lock(mutex);
                r = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
            }
            // A Retry-After is honoured up to max_delay_ms, never below the usual backoff.
            const auto delay = std::max(config.retry.delay_after(attempt, r),
                                        std::min(outcome.retry_after, config.retry.max_delay));
            u.state = DeliveryState::pending;
            u.next_attempt_ms = now_unix_ms() + delay.count();
            status = "failed";
            extra["retry_in_ms"] = delay.count();
        }
        auto write_log = [event, handler, attempt, outcome = std::move(outcome), status, ms,
                          extra = std::move(extra), m = metrics] {
            log_delivery(*event, handler, attempt, outcome, status, ms, extra);
            if (m) m->delivery(handler, status, ms / 1000);
        };
        std::lock_guard lock(mutex);
        outcomes.push_back(
            {std::move(u), event->id, in_memory, event->body.size(), std::move(write_log)});
        if (writer_waiting) writer_cv.notify_one();
    }

    // ---- poller: retries, resume after restart, replays from the CLI -------------------------

    void poller_loop() {
        auto next_stats = Clock::now();
        auto next_stats_log = Clock::now() + stats_log_interval;
        // The first pass runs at once: whatever a previous run left pending resumes now.
        for (bool first = true;; first = false) {
            std::uint64_t pass = 0;
            if (first) {
                std::lock_guard lock(mutex);
                pass = ++passes;
            } else {
                std::unique_lock lock(mutex);
                // Wake for the next poll, a retry falling due, a freed slot, the drain, or stop;
                // whichever comes first. Polling also finds what the CLI made pending.
                const auto wake = [&] {
                    return stopping || drain_poll_wanted || refill_due() ||
                           next_retry_ms <= now_unix_ms();
                };
                const auto poll_at = Clock::now() + poll_interval;
                while (!wake() && Clock::now() < poll_at) {
                    auto until = poll_at;
                    if (next_retry_ms != INT64_MAX) {  // the sentinel does not fit a time_point
                        until = std::min(
                            until, Clock::time_point(std::chrono::milliseconds(next_retry_ms)));
                    }
                    poller_cv.wait_until(lock, until);
                }
                if (stopping) break;
                starved = false;
                capped.clear();
                waiting_bytes = 0;
                drain_poll_wanted = false;
                pass = ++passes;
                if (next_retry_ms <= now_unix_ms()) next_retry_ms = INT64_MAX;
            }
            bool found = true;  // unless the pass says otherwise
            try {
                found = dispatch_due();
                if (const auto started = Clock::now(); started >= next_stats) {
                    refresh_stats(started >= next_stats_log);
                    if (started >= next_stats_log) next_stats_log = started + stats_log_interval;
                    const auto now = Clock::now();
                    next_stats = now + std::max<Clock::duration>(
                                           stats_interval, (now - started) * stats_cost_factor);
                }
            } catch (const SpoolError& e) {
                log::error("spool read failed", {{"error", e.what()}});
            }
            std::lock_guard lock(mutex);
            finished_pass = pass;
            if (!found) clear_pass = pass;
            if (draining) idle_cv.notify_all();
        }
    }

    // Takes the spool's counts (at the start, then from the poller).
    // Returns the backlog with the deliveries running from memory added, and the dead ones.
    std::pair<std::uint64_t, std::uint64_t> take_backlog() {
        auto b = reader_db->backlog();
        std::lock_guard lock(mutex);
        counted = std::move(b);
        return {counted.pending_total() + running_from_memory, counted.dead};
    }

    void refresh_stats(bool log_it) {
        const auto [pending, dead_count] = take_backlog();
        if (log_it && (pending > 0 || dead_count > 0)) {
            log::warn("spool", {{"backlog", pending}, {"dead", dead_count}});
        }
    }

    // Starts the deliveries that are due, up to max_in_flight running. True when it started one
    // or left one due for want of a free slot.
    bool dispatch_due() {
        std::size_t free;
        std::size_t claimed;
        {
            std::lock_guard lock(mutex);
            claimed = running();
            free = claimed < max_in_flight ? max_in_flight - claimed : 0;
        }
        if (free == 0) {  // every slot taken: more may be due
            std::lock_guard lock(mutex);
            starved = true;
            return true;
        }
        bool found = false;
        std::map<const Handler*, DeliveryGroup> by_handler;
        // Handlers running all they may (Handler::max_in_flight) are not asked for: what is due
        // for the others is found past however many rows those have waiting.
        std::vector<std::string> full;
        {
            std::lock_guard lock(mutex);
            for (const auto& [name, r] : running_by_handler) {
                if (r.count >= r.limit) {
                    full.push_back(name);
                    capped.insert(name);
                }
            }
        }
        found = !full.empty();  // their rows may be due: the drain looks again
        // Claimed rows are still pending in the spool, so ask for enough to see past them.
        for (const auto& row : reader_db->due(now_unix_ms(), free + claimed, full)) {
            if (free == 0) break;
            const auto handler = lookup(row.handler);
            {
                std::lock_guard lock(mutex);
                if (!handler_has_slot(row.handler)) {  // it filled up in this pass
                    capped.insert(row.handler);
                    found = true;
                    continue;
                }
                if (stopping || !claims.insert({row.event_id, row.handler}).second) continue;
                count_started(row.handler, handler.get(), false);
            }
            --free;
            found = true;
            // The due() snapshot may predate an outcome committed since; the claim came after
            // that commit released its own, so a fresh read tells whether the row is still due.
            const auto stored = reader_db->load_if_due(row, now_unix_ms());
            if (!stored) {
                std::lock_guard lock(mutex);
                claims.erase({row.event_id, row.handler});
                count_ended(row.handler, false);
                continue;
            }
            const auto event = restore_event(*stored);
            if (!event || !handler) {
                const auto why = !event ? "stored body no longer parses"
                                        : "handler \"" + row.handler + "\" is no longer configured";
                auto write_log = [id = stored->id, handler_name = row.handler, why] {
                    log::error("delivery", {{"event_id", id},
                                            {"handler", handler_name},
                                            {"status", "dead"},
                                            {"error", why}});
                };
                std::lock_guard lock(mutex);
                outcomes.push_back(
                    {{row.seq, row.handler, DeliveryState::dead, row.attempts, 0, why},
                     stored->id,
                     false,
                     0,
                     std::move(write_log)});
                if (writer_waiting) writer_cv.notify_one();
                continue;
            }
            {
                std::lock_guard lock(mutex);
                if (!bytes_free(event->body.size())) {
                    // Large events: the rest waits until running deliveries give bytes back.
                    claims.erase({row.event_id, row.handler});
                    count_ended(row.handler, false);
                    starved = true;
                    waiting_bytes = event->body.size();
                    break;
                }
                running_bytes += event->body.size();
            }
            auto& group = by_handler[handler.get()];
            if (!group.handler) {
                group.handler = handler;
                group.in_memory = false;
            }
            group.add(event, row.seq, row.attempts + 1);
        }
        // One pool job per handler for what this pass found.
        for (auto& [raw, group] : by_handler) start_deliveries(std::move(group));
        if (free == 0) {  // every slot taken: more may be due than this pass asked for
            std::lock_guard lock(mutex);
            starved = true;
        }
        return found;
    }
};

SpoolSink::SpoolSink(SpoolConfig config, unsigned delivery_threads, PendingLimits pending_limits,
                     HandlerLookup lookup, Metrics* metrics,
                     std::chrono::milliseconds poll_interval, std::size_t max_running_bytes,
                     std::chrono::milliseconds prune_interval)
    : impl_(std::make_shared<Impl>(std::move(config), delivery_threads, pending_limits,
                                   std::move(lookup), metrics, poll_interval, max_running_bytes,
                                   prune_interval)) {
    // A restart usually follows a fix: what waited for a backoff is tried again at once.
    impl_->writer_db->resume_all(now_unix_ms());
    if (impl_->config.duplicate_window.count() > 0) {
        auto recent = impl_->writer_db->recent_bodies(impl_->duplicates_since(), max_recent_bodies);
        for (auto it = recent.rbegin(); it != recent.rend(); ++it) {
            impl_->recent.add(it->body_hash, it->id, it->received_ms);
        }
    }
    const auto [pending, dead] = impl_->take_backlog();
    log::info("spool opened",
              {{"path", impl_->config.path.string()}, {"backlog", pending}, {"dead", dead}});
    impl_->writer = std::thread([impl = impl_.get()] { impl->writer_loop(); });
    name_thread(impl_->writer, "spool-writer");
    impl_->poller = std::thread([impl = impl_.get()] { impl->poller_loop(); });
    name_thread(impl_->poller, "spool-poller");
}

SpoolSink::~SpoolSink() {
    stop(std::chrono::milliseconds(0));
}

void SpoolSink::submit(const EventPtr& event, std::vector<HandlerPtr> handlers, SubmitDone done) {
    Impl::StoreRequest r;
    r.row.id = event->id;
    r.row.received_at = event->received_at;
    r.row.received_ms = now_unix_ms();
    r.row.endpoint = event->endpoint;
    r.row.type = event->envelope.type;
    r.row.body = std::shared_ptr<const std::string>(event, &event->body);  // no copy
    // Only duplicate detection reads the hash: with a window of 0 it is neither made nor kept.
    if (impl_->config.duplicate_window.count() > 0)
        r.row.body_hash = body_hash(event->endpoint, event->body);
    for (const auto& h : handlers) r.row.handlers.push_back(h->name());
    r.event = event;
    r.handlers = std::move(handlers);
    r.done = std::move(done);
    std::unique_lock lock(impl_->mutex);
    if (impl_->draining) {
        lock.unlock();
        r.done({SubmitResult::Status::overloaded, event->id, "shutting down",
                Overload::shutting_down});
        return;
    }
    if (auto refused =
            pending_refusal(impl_->pending_limits, impl_->stores.size(), impl_->stores_bytes,
                            event->body.size(), event->id, "for the spool")) {
        lock.unlock();
        r.done(std::move(*refused));
        return;
    }
    // Counted before the commit, so that the poller never runs more than max_in_flight at once.
    // A handler running all it may gets a row for the poller; the others still run from memory.
    const auto has_slot = [&](const HandlerPtr& h) { return impl_->handler_has_slot(h->name()); };
    auto& hs = r.handlers;
    const auto full = std::all_of(hs.begin(), hs.end(), has_slot)
                          ? hs.end()
                          : std::stable_partition(hs.begin(), hs.end(), has_slot);
    const auto now = static_cast<std::size_t>(full - hs.begin());
    if (now > 0 && impl_->running() + now <= max_in_flight &&
        impl_->bytes_free(now * event->body.size())) {
        for (auto it = full; it != hs.end(); ++it)
            r.row.handlers_with_rows.push_back((*it)->name());
        hs.erase(full, hs.end());
        r.fast = true;
        r.row.deliveries_in_memory = true;
        impl_->running_from_memory += hs.size();
        for (const auto& h : hs) impl_->count_started(h->name(), h.get(), true);
        impl_->running_bytes += r.bytes_in_memory();
    }
    impl_->stores_bytes += event->body.size();
    impl_->stores.push_back(std::move(r));
    if (impl_->writer_waiting) impl_->writer_cv.notify_one();
}

bool SpoolSink::wait_idle(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto probe = open_sqlite_spool(impl_->config.path);
    for (;;) {
        std::uint64_t seen = 0;
        {
            std::unique_lock lock(impl_->mutex);
            if (!impl_->idle_cv.wait_until(lock, deadline, [&] {
                    return impl_->stores.empty() && impl_->outcomes.empty() &&
                           impl_->running() == 0;
                })) {
                return false;
            }
            seen = impl_->commits;  // before the look below, so no commit after it is missed
        }
        // Nothing runs in memory; the spool tells whether retries are still waiting.
        if (probe->backlog().pending_total() == 0) return true;
        std::unique_lock lock(impl_->mutex);
        if (!impl_->idle_cv.wait_until(
                lock, std::min(deadline, std::chrono::steady_clock::now() + impl_->poll_interval),
                [&] { return impl_->commits != seen; }) &&
            std::chrono::steady_clock::now() >= deadline) {
            return false;
        }
    }
}

void SpoolSink::stop(std::chrono::milliseconds timeout, const std::function<void()>& on_timeout,
                     std::chrono::milliseconds terminate_wait) {
    const auto drained = [&] { return impl_->running() == 0 && impl_->outcomes.empty(); };
    {
        std::unique_lock lock(impl_->mutex);
        if (impl_->draining) return;
        impl_->draining = true;
        // The drain period delivers what is due: the events accepted until now are committed,
        // then the poller looks again; once a look that began after the last commit finds
        // nothing due left to start and nothing runs, the drain is done. Retries waiting for a
        // later time, and whatever the period does not reach, resume at the next start.
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        const auto idle = [&] {
            return drained() && impl_->stores.empty() && impl_->writer_waiting;
        };
        bool done = false;
        while (!done && impl_->idle_cv.wait_until(lock, deadline, idle)) {
            const auto seen = impl_->passes;
            impl_->drain_poll_wanted = true;
            impl_->poller_cv.notify_all();
            if (!impl_->idle_cv.wait_until(lock, deadline,
                                           [&] { return impl_->finished_pass > seen; }))
                break;
            done = impl_->clear_pass > seen;  // else it started more: wait for them, look again
        }
        impl_->stopping = true;
        impl_->poller_cv.notify_all();
        if (!done && !drained() && on_timeout) {
            log::warn("drain timeout: ending running deliveries",
                      {{"deliveries", impl_->running()}});
            lock.unlock();
            on_timeout();
            lock.lock();
            impl_->idle_cv.wait_for(lock, terminate_wait, drained);
        }
        if (impl_->running() != 0) {
            log::warn("deliveries still running at stop; they will run again after the next start",
                      {{"deliveries", impl_->running()}});
        }
    }
    impl_->poller.join();
    // Running deliveries finish and queue their outcomes; a handler that has not returned
    // within terminate_wait more is not waited for (its delivery stays pending in the spool).
    const bool returned = impl_->pool.stop_within(terminate_wait);
    {
        std::unique_lock lock(impl_->mutex);
        // A delivery handed to a handler's own thread (`exec`, `forward`) reports from there; one
        // that has not reported within terminate_wait more is not waited for either.
        const bool reported = returned && impl_->idle_cv.wait_for(lock, terminate_wait, [&] {
            return impl_->running() == 0;
        });
        if (!reported) {
            log::error(DeliveryPool::never_returned, {{"deliveries", impl_->running()}});
            impl_->abandoned = true;
        }
        impl_->writer_cv.notify_all();
    }
    impl_->writer.join();
}

void SpoolSink::set_pending_limits(PendingLimits limits) {
    std::lock_guard lock(impl_->mutex);
    impl_->pending_limits = limits;
}

SinkStats SpoolSink::stats() const {
    std::lock_guard lock(impl_->mutex);
    SinkStats st{impl_->counted.pending_total() + impl_->running_from_memory, impl_->counted.dead,
                 impl_->writer_db->checkpoint_failures(), true};
    // The rows as of the last count, with the deliveries running from memory (no row) added.
    auto& out = st.backlog_by_handler;
    out = impl_->counted.pending;
    for (const auto& [name, r] : impl_->running_by_handler) {
        if (r.from_memory == 0) continue;
        const auto it = std::lower_bound(out.begin(), out.end(), name,
                                         [](const std::pair<std::string, std::uint64_t>& e,
                                            const std::string& n) { return e.first < n; });
        if (it != out.end() && it->first == name) {
            it->second += r.from_memory;
        } else {
            out.insert(it, {name, r.from_memory});
        }
    }
    return st;
}

}  // namespace sigsci
