#pragma once
// Durable storage of accepted events and the state of each (event, handler) delivery. SQLite is
// the embedded implementation; the interface is what a replicated backend would implement.
// A Spool object is one connection: use it from one thread at a time.
//
// A delivery's state is held in one of two ways:
//   - as a row (pending, delivered or dead, with attempts and last error): deliveries the poller
//     drives, retries, and anything that failed once;
//   - implicitly, for an event stored with `deliveries_in_memory`: the daemon runs those
//     deliveries straight from memory and records only their progress per handler, a mark
//     `done_below`. Such a delivery with no row is delivered when its event's seq is below the
//     handler's mark, and pending otherwise. A failure writes a row (which then wins).
// This halves what the spool writes per event. Every reader (stats, list, prune) sees both.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace sigsci {

class SpoolError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

enum class DeliveryState { pending, delivered, dead };
std::string_view to_string(DeliveryState state);

struct NewEvent {
    std::string id;
    std::string received_at;  // RFC 3339
    std::int64_t received_ms = 0;
    std::string endpoint;
    std::string type;
    // The raw signed bytes, shared rather than copied: the daemon points it into the accepted
    // Event, which it keeps alive.
    std::shared_ptr<const std::string> body;
    std::string body_hash;              // for duplicate detection (32 bytes)
    std::vector<std::string> handlers;  // one pending delivery each
    // The caller runs these deliveries from memory and reports them with progress marks (or, on
    // failure, a DeliveryUpdate): no delivery rows are written for them.
    bool deliveries_in_memory = false;
    // With deliveries_in_memory: those of `handlers` that get a pending row all the same, for
    // the poller (their handler was running all it may).
    std::vector<std::string> handlers_with_rows{};
};

struct StoreOutcome {
    std::string id;
    std::int64_t seq = 0;  // the stored event's key
};

struct DeliveryUpdate {
    std::int64_t seq = 0;
    std::string handler;
    DeliveryState state = DeliveryState::pending;
    int attempts = 0;
    std::int64_t next_attempt_ms = 0;
    std::string error;
};

// Every delivery to `handler` of an event stored with deliveries_in_memory and seq < done_below
// has finished: it is delivered unless a row says otherwise. Marks only move forward.
struct ProgressMark {
    std::string handler;
    std::int64_t done_below = 0;
};

struct DueDelivery {
    std::int64_t seq = 0;
    std::string event_id;
    std::string handler;
    int attempts = 0;
};

struct StoredEvent {
    std::int64_t seq = 0;
    std::string id;
    std::string received_at;
    std::int64_t received_ms = 0;
    std::string endpoint;
    std::string type;
    std::string body;
};

struct StoredDelivery {
    std::string event_id;
    std::string received_at;
    std::string endpoint;
    std::string type;
    std::string handler;
    DeliveryState state = DeliveryState::pending;
    int attempts = 0;
    std::int64_t next_attempt_ms = 0;
    std::string last_error;
};

struct SpoolStats {
    std::uint64_t events = 0;
    std::uint64_t pending = 0;
    std::uint64_t delivered = 0;
    std::uint64_t dead = 0;
    std::optional<std::int64_t> oldest_pending_ms;  // received time of the oldest pending event
    // The same three counts for each handler with deliveries, by name.
    struct ByHandler {
        std::string handler;
        std::uint64_t pending = 0;
        std::uint64_t delivered = 0;
        std::uint64_t dead = 0;
    };
    std::vector<ByHandler> by_handler;
};

struct SpoolOptions {
    std::uint64_t max_bytes = 0;  // 0: no limit; beyond it stores fail (SQLITE_FULL)
    // For the writer's connection: checkpoints run on a thread of their own (docs/spool.md).
    bool background_checkpoints = false;
};

class Spool {
  public:
    virtual ~Spool() = default;

    // One transaction: stores each event, then applies each update (creating the delivery's row
    // if it has none) and each progress mark. Durable on return when it stored events. Throws
    // SpoolError when nothing was committed.
    virtual std::vector<StoreOutcome> commit(std::span<const NewEvent> events,
                                             std::span<const DeliveryUpdate> updates,
                                             std::span<const ProgressMark> marks = {}) = 0;

    // The newest events received at or after `since_ms` (at most `limit`), newest first: what
    // duplicate detection needs to know after a restart.
    struct RecentBody {
        std::string body_hash;
        std::string id;
        std::int64_t received_ms = 0;
    };
    virtual std::vector<RecentBody> recent_bodies(std::int64_t since_ms, std::size_t limit) = 0;

    // At start: every pending delivery becomes due now (attempt counts are kept), and what a
    // previous run left pending in memory gets its row. Returns how many rows were made due.
    virtual std::size_t resume_all(std::int64_t now_ms) = 0;

    // Pending deliveries whose next attempt is due, oldest first; none of the handlers in `skip`.
    virtual std::vector<DueDelivery> due(std::int64_t now_ms, std::size_t limit,
                                         const std::vector<std::string>& skip = {}) = 0;
    // The delivery's event if the delivery is still pending, due, and at `attempts`, read in a
    // fresh snapshot: due()'s list may predate an outcome committed since.
    virtual std::optional<StoredEvent> load_if_due(const DueDelivery& delivery,
                                                   std::int64_t now_ms) = 0;
    virtual std::optional<StoredEvent> find(const std::string& id) = 0;
    // Full counts (scans the spool: for operators).
    virtual SpoolStats stats() = 0;
    // Pending delivery rows by handler, and dead ones, from small indexes: cheap enough to poll.
    // Deliveries running from memory are not counted (their owner knows them).
    struct Backlog {
        std::vector<std::pair<std::string, std::uint64_t>> pending;  // by handler name, in order
        std::uint64_t dead = 0;
        std::uint64_t pending_total() const;
    };
    virtual Backlog backlog() = 0;

    // One slice of pruning: reads at most `limit` events, in seq order from `from_seq` on, and
    // deletes those received before `before_ms` whose deliveries are all delivered (or that had
    // none). It stops at the first event received at or after `before_ms` and not after
    // `now_ms`: events are stored in time order, so the rest are younger (one stored after the
    // clock stepped back waits for those before it). An event received after `now_ms` was
    // stamped by a clock that has since stepped back: it is read past, so that it cannot hold
    // pruning up until its time comes. `next_seq` is where the next slice starts; `done` when
    // nothing is left. `kept_for_time` is the first event the slice kept for its receipt time
    // (the one that ended it, or one stamped in the future), if any: time alone makes it
    // prunable, so a later round must read it again. Every other event it kept waits for a
    // delivery, which only a committed outcome can end.
    struct PruneSlice {
        std::size_t deleted = 0;
        std::int64_t next_seq = 0;
        bool done = false;
        std::optional<std::int64_t> kept_for_time;
    };
    virtual PruneSlice prune(std::int64_t before_ms, std::int64_t now_ms, std::int64_t from_seq,
                             std::size_t limit) = 0;

    // Operator commands.
    virtual std::vector<StoredDelivery> list(std::optional<DeliveryState> state,
                                             const std::string& type, std::size_t limit) = 0;
    virtual std::vector<StoredDelivery> deliveries_of(const std::string& event_id) = 0;
    // Dead deliveries (of one event, or all when `event_id` is empty) become pending, due now,
    // with a fresh attempt budget. Returns how many.
    virtual std::size_t retry_dead(const std::string& event_id, std::int64_t now_ms) = 0;
    // Deletes every event received before `before_ms`, whatever its state. Returns how many.
    virtual std::size_t purge(std::int64_t before_ms) = 0;
    // With background_checkpoints: how many checkpoints have failed (not merely been busy) since
    // the connection opened. Unlike the rest, callable from any thread.
    virtual std::uint64_t checkpoint_failures() const = 0;
};

// Opens (creating if needed) the SQLite spool; throws SpoolError naming the path.
std::unique_ptr<Spool> open_sqlite_spool(const std::filesystem::path& path,
                                         const SpoolOptions& options = {});

}  // namespace sigsci
