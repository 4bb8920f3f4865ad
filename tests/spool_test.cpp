#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <future>
#include <mutex>
#include <numeric>

#include <sqlite3.h>
#include <unistd.h>

#include "sigsci/clock.hpp"
#include "sigsci/completion_batch.hpp"
#include "sigsci/log.hpp"
#include "sigsci/spool.hpp"
#include "sigsci/spool_sink.hpp"
#include "sqlite_test_db.hpp"
#include "test_support.hpp"

namespace sigsci {
namespace {

NewEvent new_event(const std::string& id, const std::string& body, std::int64_t received_ms,
                   std::vector<std::string> handlers) {
    auto env = parse_envelope(body);
    return NewEvent{id,
                    format_rfc3339_ms(std::chrono::system_clock::time_point(
                        std::chrono::milliseconds(received_ms))),
                    received_ms,
                    "/hook",
                    env ? env.value().type : "?",
                    std::make_shared<const std::string>(body),
                    body_hash("/hook", body),
                    std::move(handlers)};
}

NewEvent in_memory_event(const std::string& id, const std::string& body, std::int64_t received_ms,
                         std::vector<std::string> handlers) {
    auto e = new_event(id, body, received_ms, std::move(handlers));
    e.deliveries_in_memory = true;
    return e;
}

// Direct SQL on a spool file, for what the interface does not show (which rows exist) and for
// building a spool the way an older version left it.
std::int64_t count_rows(const std::filesystem::path& db, const std::string& sql) {
    sqlite3* raw = nullptr;
    EXPECT_EQ(sqlite3_open(db.c_str(), &raw), SQLITE_OK);
    sqlite3_stmt* s = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(raw, sql.c_str(), -1, &s, nullptr), SQLITE_OK) << sql;
    std::int64_t n = -1;
    if (sqlite3_step(s) == SQLITE_ROW) n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(raw);
    return n;
}

TEST(SpoolCli, ParsesDatesAsUtc) {
    EXPECT_EQ(parse_date_ms("1970-01-02"), 86400000);
    EXPECT_EQ(parse_date_ms("2026-11-29T17:16:26Z"), 1795972586000);
    EXPECT_EQ(parse_date_ms("2026-11-29T18:16:26.5+01:00"),
              1795972586500);                                // fraction kept to the ms
    EXPECT_EQ(parse_date_ms("2999-01-01"), 32472144000000);  // past system_clock's range
    EXPECT_EQ(format_rfc3339_ms(32472144000000), "2999-01-01T00:00:00.000Z");
    EXPECT_EQ(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    // The second's text is cached per thread: same second, the next one, and back again.
    EXPECT_EQ(format_rfc3339_ms(1795972586007), "2026-11-29T17:16:26.007Z");
    EXPECT_EQ(format_rfc3339_ms(1795972586999), "2026-11-29T17:16:26.999Z");
    EXPECT_EQ(format_rfc3339_ms(1795972587040), "2026-11-29T17:16:27.040Z");
    EXPECT_EQ(format_rfc3339_ms(1795972586500), "2026-11-29T17:16:26.500Z");
    for (const char* bad : {"", "yesterday", "2026-13-01", "2026-11-29T25:00:00Z",
                            "2026-11-29T17:16:26", "2026-11-29T17:16:26+0100", "1969-12-31"}) {
        EXPECT_FALSE(parse_date_ms(bad)) << bad;
    }
}

TEST(EventIds, AreUuidv7sThatCarryTheirMillisecond) {
    const auto t = std::chrono::system_clock::time_point(std::chrono::milliseconds(1795972586123));
    const auto a = new_event_id(t);
    const auto b = new_event_id(t);
    EXPECT_NE(a, b);
    ASSERT_EQ(a.size(), 36u);
    EXPECT_EQ(a.substr(0, 15), "01a2284e-da8b-7");  // 1795972586123 = 0x01a2284eda8b
    EXPECT_EQ(event_id_ms(a), 1795972586123);
    EXPECT_EQ(event_id_ms(b), 1795972586123);
    EXPECT_LT(a.substr(0, 13), new_event_id(t + std::chrono::milliseconds(1)).substr(0, 13));
    auto upper = a;
    upper[0] = 'A';
    auto v4 = a;
    v4[14] = '4';
    auto variant = a;
    variant[19] = 'c';
    auto dash = a;
    dash[8] = 'x';
    for (const auto& bad :
         {std::string(), std::string("e1"), a.substr(1), upper, v4, variant, dash}) {
        EXPECT_FALSE(event_id_ms(bad)) << bad;
    }
}

// ---- the SQLite spool itself ------------------------------------------------------------

class SqliteSpoolTest : public ::testing::Test {
  protected:
    test::TempDir dir;
    std::unique_ptr<Spool> spool = open_sqlite_spool(dir / "spool.db");
    std::vector<StoreOutcome> store(std::vector<NewEvent> events) {
        return spool->commit(events, {});
    }
};

TEST_F(SqliteSpoolTest, StoresEventsWithAPendingDeliveryPerHandler) {
    const auto body = test::sample("flag");
    const auto out = store({new_event("e1", body, 1000, {"a", "b"})});
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].id, "e1");
    const auto loaded = spool->find("e1");
    ASSERT_TRUE(loaded);
    EXPECT_EQ(loaded->seq, out[0].seq);
    EXPECT_EQ(loaded->id, "e1");
    EXPECT_EQ(loaded->body, body);  // the raw bytes, byte for byte
    EXPECT_EQ(loaded->type, "flag");
    const auto due = spool->due(1000, 10);
    ASSERT_EQ(due.size(), 2u);
    EXPECT_EQ(due[0].event_id, "e1");
    EXPECT_EQ(spool->stats().pending, 2u);
    EXPECT_EQ(spool->stats().events, 1u);
}

TEST_F(SqliteSpoolTest, RecentBodiesAreTheNewestWithinTheWindow) {
    store({new_event("old", test::sample("flag"), 1000, {"a"})});
    store({new_event("mid", test::sample("listCreated"), 5000, {"a"})});
    store({new_event("new", test::sample("ruleCreated"), 9000, {"a"})});
    const auto recent = spool->recent_bodies(4000, 10);
    ASSERT_EQ(recent.size(), 2u);
    EXPECT_EQ(recent[0].id, "new");
    EXPECT_EQ(recent[1].id, "mid");
    EXPECT_EQ(recent[1].body_hash, body_hash("/hook", test::sample("listCreated")));
    EXPECT_EQ(spool->recent_bodies(0, 1).size(), 1u);
}

TEST_F(SqliteSpoolTest, UpdatesMoveDeliveriesBetweenStates) {
    const auto seq = store({new_event("e1", test::sample("flag"), 1000, {"a", "b", "c"})})[0].seq;
    const std::vector<DeliveryUpdate> ups = {
        {seq, "a", DeliveryState::delivered, 1, 0, ""},
        {seq, "b", DeliveryState::pending, 1, 50000, "boom"},
        {seq, "c", DeliveryState::dead, 3, 0, "gave up"},
    };
    spool->commit({}, ups);
    const auto st = spool->stats();
    EXPECT_EQ(st.delivered, 1u);
    EXPECT_EQ(st.pending, 1u);
    EXPECT_EQ(st.dead, 1u);
    ASSERT_EQ(st.by_handler.size(), 3u);  // by name
    EXPECT_EQ(st.by_handler[0].handler, "a");
    EXPECT_EQ(st.by_handler[0].delivered, 1u);
    EXPECT_EQ(st.by_handler[1].handler, "b");
    EXPECT_EQ(st.by_handler[1].pending, 1u);
    EXPECT_EQ(st.by_handler[2].handler, "c");
    EXPECT_EQ(st.by_handler[2].dead, 1u);
    EXPECT_EQ(st.by_handler[2].pending + st.by_handler[2].delivered, 0u);
    EXPECT_TRUE(spool->due(49999, 10).empty());  // b waits for its backoff
    ASSERT_EQ(spool->due(50000, 10).size(), 1u);
    const auto dead = spool->list(DeliveryState::dead, "", 10);
    ASSERT_EQ(dead.size(), 1u);
    EXPECT_EQ(dead[0].handler, "c");
    EXPECT_EQ(dead[0].last_error, "gave up");
    EXPECT_EQ(spool->retry_dead("e1", 60000), 1u);
    EXPECT_EQ(spool->stats().dead, 0u);
    EXPECT_EQ(spool->due(60000, 10).size(), 2u);
}

// Dead deliveries are listed from their rows' own index, not through the view of every
// delivery: the same deliveries in the same order (event, then handler), filtered by type and
// cut at the limit.
TEST_F(SqliteSpoolTest, DeadDeliveriesAreListedAsTheViewWouldListThem) {
    const auto out = store({new_event("e0", test::sample("flag"), 1000, {"b", "a", "c"}),
                            new_event("e1", test::sample("listCreated"), 1000, {"a"}),
                            new_event("e2", test::sample("flag"), 1000, {"a", "b"})});
    const std::vector<DeliveryUpdate> ups = {
        {out[0].seq, "b", DeliveryState::dead, 3, 0, "b gave up"},
        {out[0].seq, "a", DeliveryState::dead, 3, 0, "a gave up"},
        {out[0].seq, "c", DeliveryState::delivered, 1, 0, ""},
        {out[1].seq, "a", DeliveryState::dead, 3, 0, "refused"},
        {out[2].seq, "b", DeliveryState::dead, 3, 0, "timeout"},
    };
    spool->commit({}, ups);
    const auto names = [](const std::vector<StoredDelivery>& ds) {
        std::vector<std::string> n;
        for (const auto& d : ds) n.push_back(d.event_id + "/" + d.handler + "/" + d.last_error);
        return n;
    };
    std::vector<StoredDelivery> from_view;
    for (const auto& d : spool->list(std::nullopt, "", 100))
        if (d.state == DeliveryState::dead) from_view.push_back(d);
    const std::vector<std::string> all = {"e0/a/a gave up", "e0/b/b gave up", "e1/a/refused",
                                          "e2/b/timeout"};
    EXPECT_EQ(names(from_view), all);
    EXPECT_EQ(names(spool->list(DeliveryState::dead, "", 100)), all);
    EXPECT_EQ(names(spool->list(DeliveryState::dead, "flag", 100)),
              (std::vector<std::string>{"e0/a/a gave up", "e0/b/b gave up", "e2/b/timeout"}));
    EXPECT_EQ(names(spool->list(DeliveryState::dead, "", 2)),
              (std::vector<std::string>{"e0/a/a gave up", "e0/b/b gave up"}));
    const auto first = spool->list(DeliveryState::dead, "", 1).at(0);
    EXPECT_EQ(first.type, "flag");
    EXPECT_EQ(first.endpoint, from_view[0].endpoint);
    EXPECT_EQ(first.received_at, from_view[0].received_at);
    EXPECT_EQ(first.attempts, 3);
    EXPECT_EQ(first.state, DeliveryState::dead);
}

// due() gives the oldest due deliveries first across handlers, up to its limit, none of a
// skipped handler's (however many it has waiting ahead of the others') and none not yet due.
TEST_F(SqliteSpoolTest, DueIsOldestFirstAcrossHandlersAndSkipsFullOnes) {
    std::vector<NewEvent> events;
    for (int i = 0; i < 6; ++i)
        events.push_back(new_event("e" + std::to_string(i), test::numbered(test::sample("flag"), i),
                                   1000, {"down", "a", "b"}));
    const auto out = store(std::move(events));
    // Due times: a at 100 + 10 i, b at 105 + 10 i, except b's last (not due before 9,000);
    // every "down" delivery is due first, at 0.
    std::vector<DeliveryUpdate> ups;
    for (int i = 0; i < 6; ++i) {
        ups.push_back({out[i].seq, "down", DeliveryState::pending, 1, 0, "refused"});
        ups.push_back({out[i].seq, "a", DeliveryState::pending, 1, 100 + 10 * i, "refused"});
        ups.push_back(
            {out[i].seq, "b", DeliveryState::pending, 1, i == 5 ? 9000 : 105 + 10 * i, "refused"});
    }
    spool->commit({}, ups);
    const auto names = [](const std::vector<DueDelivery>& due) {
        std::string s;
        for (const auto& d : due) s += d.handler + ":" + d.event_id + " ";
        return s;
    };
    EXPECT_EQ(names(spool->due(1000, 5, {"down"})), "a:e0 b:e0 a:e1 b:e1 a:e2 ");
    EXPECT_EQ(names(spool->due(1000, 20, {"down"})),
              "a:e0 b:e0 a:e1 b:e1 a:e2 b:e2 a:e3 b:e3 a:e4 b:e4 a:e5 ");
    EXPECT_EQ(names(spool->due(1000, 3)), "down:e0 down:e1 down:e2 ");
    EXPECT_EQ(names(spool->due(1000, 20, {"down", "a", "b"})), "");
}

// The poller's due() list can be stale by the time it claims a row; load_if_due() is the
// re-check that keeps a delivery that just finished from running again.
TEST_F(SqliteSpoolTest, LoadIfDueFindsNothingOnceAnOutcomeIsCommitted) {
    const auto seq = store({new_event("e1", test::sample("flag"), 1000, {"a", "b"})})[0].seq;
    const auto listed = spool->due(2000, 10);
    ASSERT_EQ(listed.size(), 2u);
    const auto before = spool->load_if_due(listed[0], 2000);
    ASSERT_TRUE(before.has_value());
    EXPECT_EQ(before->id, "e1");
    EXPECT_EQ(before->seq, seq);
    EXPECT_EQ(before->body, test::sample("flag"));
    const std::vector<DeliveryUpdate> ups = {{seq, "a", DeliveryState::delivered, 1, 0, ""},
                                             {seq, "b", DeliveryState::pending, 1, 1500, "retry"}};
    spool->commit({}, ups);
    for (const auto& d : listed) EXPECT_FALSE(spool->load_if_due(d, 2000)) << d.handler;
    // b's retry is due again, now at attempt 1, but not before its time.
    const auto again = spool->due(2000, 10);
    ASSERT_EQ(again.size(), 1u);
    EXPECT_FALSE(spool->load_if_due(again[0], 1499));
    const auto retried = spool->load_if_due(again[0], 2000);
    ASSERT_TRUE(retried.has_value());
    EXPECT_EQ(retried->id, "e1");
}

TEST_F(SqliteSpoolTest, PruneKeepsAnythingNotFullyDelivered) {
    const auto done = store({new_event("done", test::sample("flag"), 1000, {"a"})})[0].seq;
    store({new_event("waiting", test::sample("listCreated"), 1000, {"a"})});
    store({new_event("unrouted", test::sample("ruleCreated"), 1000, {})});
    const auto recent =
        store({new_event("recent", test::sample("ruleDeleted"), 9000, {"a"})})[0].seq;
    const std::vector<DeliveryUpdate> ups = {{done, "a", DeliveryState::delivered, 1, 0, ""},
                                             {recent, "a", DeliveryState::delivered, 1, 0, ""}};
    spool->commit({}, ups);
    EXPECT_EQ(spool->prune(5000, 20000, 0, 100).deleted, 2u);  // "done" and "unrouted"
    EXPECT_FALSE(spool->find("done"));
    EXPECT_FALSE(spool->find("unrouted"));
    EXPECT_TRUE(spool->find("waiting"));
    EXPECT_TRUE(spool->find("recent"));
}

TEST_F(SqliteSpoolTest, PurgeDeletesEverythingBeforeADate) {
    store({new_event("old", test::sample("flag"), 1000, {"a"}),
           new_event("new", test::sample("listCreated"), 9000, {"a"})});
    EXPECT_EQ(spool->purge(5000), 1u);
    EXPECT_FALSE(spool->find("old"));
    EXPECT_TRUE(spool->find("new"));
    EXPECT_EQ(spool->stats().pending, 1u);  // the old event's delivery went with it
    EXPECT_EQ(count_rows(dir / "spool.db", "SELECT COUNT(*) FROM deliveries"), 1);  // its row too
}

// Pruning goes in slices of a bounded number of events, each starting where the last stopped,
// and a round ends at the first event too young to go. An event's rows go with it.
TEST_F(SqliteSpoolTest, PruneGoesInSlicesAndStopsAtTheFirstYoungEvent) {
    std::vector<std::int64_t> seq;
    const auto add = [&](const std::string& id, std::int64_t received_ms,
                         std::vector<std::string> handlers) {
        seq.push_back(store({new_event(id, test::sample("flag"), received_ms, handlers)})[0].seq);
    };
    add("e0", 1000, {"a"});
    add("e1", 1000, {"a"});  // stays pending
    add("e2", 1000, {});
    add("e3", 1000, {});
    add("e4", 1000, {});
    add("e5", 9000, {});
    add("e6", 1000, {});  // stored after the clock stepped back
    const std::vector<DeliveryUpdate> ups = {{seq[0], "a", DeliveryState::delivered, 1, 0, ""}};
    spool->commit({}, ups);
    ASSERT_EQ(count_rows(dir / "spool.db", "SELECT COUNT(*) FROM deliveries"), 2);

    auto slice = spool->prune(5000, 20000, 0, 3);  // reads e0, e1, e2
    EXPECT_EQ(slice.deleted, 2u);
    EXPECT_EQ(slice.next_seq, seq[2] + 1);
    EXPECT_FALSE(slice.done);
    EXPECT_FALSE(slice.kept_for_time);  // e1 waits for its delivery, not for time
    EXPECT_EQ(count_rows(dir / "spool.db", "SELECT COUNT(*) FROM deliveries"), 1);  // e1's
    slice = spool->prune(5000, 20000, slice.next_seq, 3);  // reads e3, e4, then e5 ends the round
    EXPECT_EQ(slice.deleted, 2u);
    EXPECT_EQ(slice.next_seq, seq[4] + 1);
    EXPECT_TRUE(slice.done);
    EXPECT_EQ(slice.kept_for_time, seq[5]);
    for (const auto* id : {"e0", "e2", "e3", "e4"}) EXPECT_FALSE(spool->find(id)) << id;
    for (const auto* id : {"e1", "e5", "e6"}) EXPECT_TRUE(spool->find(id)) << id;

    // The next round, once e5 is old enough too, reads past the pending e1.
    slice = spool->prune(10000, 20000, 0, 10);
    EXPECT_EQ(slice.deleted, 2u);
    EXPECT_TRUE(slice.done);  // fewer than 10 events left to read
    EXPECT_TRUE(spool->find("e1"));
    EXPECT_FALSE(spool->find("e5"));
    EXPECT_FALSE(spool->find("e6"));
}

// An event stamped in the future, by a clock that has since stepped back, does not end a round:
// pruning reads past it (a year ahead, it would otherwise hold pruning up for a year). It goes
// once it is old itself.
TEST_F(SqliteSpoolTest, AnEventStampedInTheFutureDoesNotHoldPruningUp) {
    store({new_event("future", test::sample("flag"), 50000, {})});
    store({new_event("old", test::sample("flag"), 1000, {})});
    store({new_event("young", test::sample("flag"), 9000, {})});
    const auto future_seq = spool->find("future")->seq;
    auto slice = spool->prune(5000, 20000, 0, 10);
    EXPECT_EQ(slice.deleted, 1u);
    EXPECT_TRUE(slice.done);
    EXPECT_EQ(slice.kept_for_time, future_seq);  // the next round reads from it again
    EXPECT_TRUE(spool->find("future"));
    EXPECT_FALSE(spool->find("old"));
    EXPECT_TRUE(spool->find("young"));
    slice = spool->prune(60000, 70000, 0, 10);
    EXPECT_EQ(slice.deleted, 2u);
    EXPECT_FALSE(spool->find("future"));
}

// find() has no index on id: it searches the rows received near the id's millisecond first,
// then the whole table. Two rows with one id (which ids made by new_event_id never share) show
// which of the two searches answered.
TEST_F(SqliteSpoolTest, FindsAnEventByIdNearItsTimeAndAfterTheClockStepped) {
    using std::chrono::milliseconds;
    const std::int64_t t0 = 1795972586000;
    const auto at = [&](std::int64_t ms) {
        return new_event_id(std::chrono::system_clock::time_point(milliseconds(ms)));
    };
    const auto wanted = at(t0 + 2500);
    // A decoy first: an hour earlier, with the wanted id. A scan in seq order would meet it first.
    std::vector<NewEvent> rows = {new_event(wanted, test::sample("ruleCreated"), t0 - 3600000, {})};
    std::vector<std::string> ids;
    for (int i = 0; i < 200; ++i) {
        const auto ms = t0 + 100 * i;
        ids.push_back(ms == t0 + 2500 ? wanted : at(ms));
        rows.push_back(new_event(ids.back(), test::sample("flag"), ms, {}));
    }
    // Then the clock steps back a minute: these rows' times are below those before them.
    for (int i = 0; i < 50; ++i) {
        const auto ms = t0 - 60000 + 100 * i;
        ids.push_back(at(ms));
        rows.push_back(new_event(ids.back(), test::sample("listCreated"), ms, {}));
    }
    const auto stored = store(rows);
    const auto found = spool->find(wanted);
    ASSERT_TRUE(found);
    EXPECT_EQ(found->seq, stored[26].seq);  // not the decoy's stored[0]
    EXPECT_EQ(found->type, "flag");
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] == wanted) continue;
        const auto e = spool->find(ids[i]);
        ASSERT_TRUE(e) << i;
        EXPECT_EQ(e->seq, stored[i + 1].seq) << i;
    }
    EXPECT_FALSE(spool->find(at(t0 + 2501)));  // its neighbours' time, but no such event
    EXPECT_FALSE(spool->find(at(t0 + 3600000)));
}

TEST_F(SqliteSpoolTest, SurvivesReopening) {
    store({new_event("e1", test::sample("flag"), 1000, {"a"})});
    spool.reset();
    spool = open_sqlite_spool(dir / "spool.db");
    EXPECT_TRUE(spool->find("e1"));
    EXPECT_EQ(spool->stats().pending, 1u);
}

// Deliveries run from memory have no rows: a progress mark per handler says which are done, a
// failure gets a row, and every reader sees both.
TEST_F(SqliteSpoolTest, InMemoryDeliveriesAreTrackedByProgressMarks) {
    const auto out = store({in_memory_event("e1", test::sample("flag"), 1000, {"a", "b"}),
                            in_memory_event("e2", test::sample("listCreated"), 1000, {"a", "b"})});
    const auto e1 = out[0].seq;
    const auto e2 = out[1].seq;
    EXPECT_EQ(count_rows(dir / "spool.db", "SELECT COUNT(*) FROM deliveries"), 0);
    EXPECT_TRUE(spool->due(9000, 10).empty());  // running from memory: not the poller's
    EXPECT_EQ(spool->stats().pending, 4u);
    EXPECT_EQ(spool->list(DeliveryState::pending, "", 10).size(), 4u);
    EXPECT_EQ(spool->backlog().pending_total(), 0u);  // rows only: the owner counts the rest

    // a finished e1; b failed e1 once (a row, due later) and finished e2.
    const std::vector<DeliveryUpdate> failed = {
        {e1, "b", DeliveryState::pending, 1, 5000, "refused"}};
    spool->commit({}, failed, std::vector<ProgressMark>{{"a", e2}, {"b", e2 + 1}});
    auto st = spool->stats();
    EXPECT_EQ(st.delivered, 2u);  // (e1, a) and (e2, b)
    EXPECT_EQ(st.pending, 2u);    // (e1, b) by its row, (e2, a) above a's mark
    ASSERT_EQ(spool->due(5000, 10).size(), 1u);
    EXPECT_EQ(spool->due(5000, 10)[0].handler, "b");
    const auto of_e1 = spool->deliveries_of("e1");
    ASSERT_EQ(of_e1.size(), 2u);
    for (const auto& d : of_e1) {
        EXPECT_EQ(d.state, d.handler == "a" ? DeliveryState::delivered : DeliveryState::pending);
        EXPECT_EQ(d.last_error, d.handler == "a" ? "" : "refused");
    }
    EXPECT_EQ(spool->prune(9000, 20000, 0, 10).deleted, 0u);  // neither event is fully delivered

    // Marks never move back; once a passes e2 and b's row is delivered, both can go.
    spool->commit({}, {}, std::vector<ProgressMark>{{"a", e2 + 1}, {"b", e1}});
    const std::vector<DeliveryUpdate> retried = {{e1, "b", DeliveryState::delivered, 2, 0, ""}};
    spool->commit({}, retried);
    st = spool->stats();
    EXPECT_EQ(st.delivered, 4u);
    EXPECT_EQ(st.pending, 0u);
    EXPECT_EQ(spool->prune(9000, 20000, 0, 10).deleted, 2u);
}

// An event can be run from memory for some handlers and left to the poller, with a row, for
// another (a handler that was running all it may): the mark covers the first, the row the rest.
TEST_F(SqliteSpoolTest, AnEventCanHaveRowsForSomeHandlersAndMarksForTheOthers) {
    auto e = in_memory_event("e1", test::sample("flag"), 1000, {"a", "full", "b"});
    e.handlers_with_rows = {"full"};
    const auto seq = store({std::move(e)})[0].seq;
    EXPECT_EQ(count_rows(dir / "spool.db", "SELECT COUNT(*) FROM deliveries"), 1);
    EXPECT_EQ(count_rows(dir / "spool.db", "SELECT COUNT(*) FROM progress"), 2);  // a and b
    const auto due = spool->due(1000, 10);
    ASSERT_EQ(due.size(), 1u);
    EXPECT_EQ(due[0].handler, "full");
    EXPECT_EQ(spool->stats().pending, 3u);

    spool->commit({}, {}, std::vector<ProgressMark>{{"a", seq + 1}, {"b", seq + 1}});
    auto st = spool->stats();
    EXPECT_EQ(st.delivered, 2u);
    EXPECT_EQ(st.pending, 1u);  // the row, whatever the marks say
    ASSERT_EQ(st.by_handler.size(), 3u);
    EXPECT_EQ(st.by_handler[0].handler, "a");
    EXPECT_EQ(st.by_handler[0].delivered, 1u);  // by the mark
    EXPECT_EQ(st.by_handler[2].handler, "full");
    EXPECT_EQ(st.by_handler[2].pending, 1u);  // by the row
    EXPECT_EQ(spool->prune(9000, 20000, 0, 10).deleted, 0u);
    const std::vector<DeliveryUpdate> done = {{seq, "full", DeliveryState::delivered, 1, 0, ""}};
    spool->commit({}, done);
    EXPECT_EQ(spool->stats().delivered, 3u);
    EXPECT_EQ(spool->prune(9000, 20000, 0, 10).deleted, 1u);
}

// The routed handlers are kept as a JSON array, read back by SQLite's json_each: a name with
// quotes, a backslash or a control character must come back as it went in.
TEST_F(SqliteSpoolTest, HandlerNamesSurviveTheJsonColumn) {
    const std::string odd = "we\"ird\\name\x01";
    const auto seq =
        store({in_memory_event("e1", test::sample("flag"), 1000, {odd, "plain"})})[0].seq;
    auto pending = spool->list(DeliveryState::pending, "", 10);
    ASSERT_EQ(pending.size(), 2u);
    std::sort(pending.begin(), pending.end(),
              [](const auto& a, const auto& b) { return a.handler < b.handler; });
    EXPECT_EQ(pending[0].handler, "plain");
    EXPECT_EQ(pending[1].handler, odd);
    spool->commit({}, {}, std::vector<ProgressMark>{{odd, seq + 1}});
    ASSERT_EQ(spool->list(DeliveryState::delivered, "", 10).size(), 1u);
    EXPECT_EQ(spool->list(DeliveryState::delivered, "", 10)[0].handler, odd);
}

// What a run was delivering from memory when it stopped (or was killed) gets a row at the next
// start, due at once; what it had finished does not run again.
TEST_F(SqliteSpoolTest, ResumeGivesRowsToWhatWasRunningFromMemory) {
    const auto out = store({in_memory_event("done", test::sample("flag"), 1000, {"a"}),
                            in_memory_event("cut", test::sample("listCreated"), 1000, {"a"}),
                            new_event("polled", test::sample("ruleCreated"), 1000, {"a"})});
    spool->commit({}, {}, std::vector<ProgressMark>{{"a", out[1].seq}});
    spool.reset();
    spool = open_sqlite_spool(dir / "spool.db");
    EXPECT_EQ(spool->resume_all(2000), 1u);  // "cut" gets its row; "polled" had one, due
    const auto due = spool->due(2000, 10);   // oldest due first
    ASSERT_EQ(due.size(), 2u);
    EXPECT_EQ(due[0].event_id, "polled");
    EXPECT_EQ(due[1].event_id, "cut");
    EXPECT_EQ(due[1].attempts, 0);
    EXPECT_EQ(spool->stats().delivered, 1u);
    EXPECT_EQ(spool->resume_all(3000), 0u);  // nothing is made twice
    EXPECT_EQ(count_rows(dir / "spool.db", "SELECT COUNT(*) FROM deliveries"), 2);
    // New in-memory events after the start are pending above the moved mark.
    store({in_memory_event("next", test::sample("ruleDeleted"), 4000, {"a"})});
    EXPECT_EQ(spool->stats().pending, 3u);
}

// A new event's seq is above every seq given out before, even once the newest events are gone:
// pruned after a quiet day, or purged by `spool purge` (another connection) while the daemon
// runs. A reused seq fell below the handler's mark, so the event counted as delivered before it
// was, and after a crash resume_all() gave it no row: its delivery was lost.
TEST_F(SqliteSpoolTest, SeqsAreNeverReusedAfterTheNewestEventsAreDeleted) {
    const auto first = store({in_memory_event("e1", test::sample("flag"), 1000, {"a"})})[0].seq;
    spool->commit({}, {}, std::vector<ProgressMark>{{"a", first + 1}});
    EXPECT_EQ(spool->prune(9000, 20000, 0, 10).deleted, 1u);  // the quiet day: the table is empty

    const auto second = store({in_memory_event("e2", test::sample("flag"), 10000, {"a"})})[0].seq;
    EXPECT_GT(second, first);
    auto st = spool->stats();
    EXPECT_EQ(st.pending, 1u);  // above a's mark, not taken for delivered
    EXPECT_EQ(st.delivered, 0u);
    spool->commit({}, {}, std::vector<ProgressMark>{{"a", second + 1}});

    const auto cli = open_sqlite_spool(dir / "spool.db");
    EXPECT_EQ(cli->purge(20000), 1u);
    const auto third = store({in_memory_event("e3", test::sample("flag"), 30000, {"a"})})[0].seq;
    EXPECT_GT(third, second);

    // The crash: the delivery of e3 never ended. The next start gives it a row.
    spool.reset();
    spool = open_sqlite_spool(dir / "spool.db");
    EXPECT_EQ(spool->resume_all(40000), 1u);
    const auto due = spool->due(40000, 10);
    ASSERT_EQ(due.size(), 1u);
    EXPECT_EQ(due[0].event_id, "e3");
    // A spool opened afresh starts above the marks too: the next start's first event.
    const auto fourth = store({in_memory_event("e4", test::sample("flag"), 50000, {"a"})})[0].seq;
    EXPECT_GT(fourth, third);
    EXPECT_EQ(spool->stats().pending, 2u);
}

// A spool written by the version before progress marks opens, keeps its rows, and takes new
// events of either kind.
TEST_F(SqliteSpoolTest, OpensASpoolFromBeforeProgressMarks) {
    spool.reset();
    const auto path = dir / "old.db";
    {
        sqlite3* raw = nullptr;
        ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
        const char* v1 = R"sql(
PRAGMA journal_mode = WAL;
CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, received_at TEXT NOT NULL,
    received_ms INTEGER NOT NULL, endpoint TEXT NOT NULL, type TEXT NOT NULL, body BLOB NOT NULL,
    body_hash BLOB NOT NULL);
CREATE TABLE deliveries (event_seq INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    handler TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL, last_error TEXT, PRIMARY KEY (event_seq, handler))
    WITHOUT ROWID;
INSERT INTO events VALUES (1, 'old', '1970-01-01T00:00:01.000Z', 1000, '/hook', 'flag', '{}', x'00');
INSERT INTO deliveries VALUES (1, 'a', 'pending', 0, 1000, NULL);
PRAGMA user_version = 1;
)sql";
        ASSERT_EQ(sqlite3_exec(raw, v1, nullptr, nullptr, nullptr), SQLITE_OK);
        sqlite3_close(raw);
    }
    spool = open_sqlite_spool(path);
    EXPECT_EQ(count_rows(path, "PRAGMA user_version"), 2);
    EXPECT_EQ(spool->stats().pending, 1u);
    ASSERT_EQ(spool->due(1000, 10).size(), 1u);
    const auto out = spool->commit(
        std::vector<NewEvent>{in_memory_event("new", test::sample("flag"), 2000, {"a"}),
                              new_event("rows", test::sample("flag"), 2000, {"a"})},
        {});
    EXPECT_EQ(spool->stats().pending, 3u);
    spool->commit({}, {}, std::vector<ProgressMark>{{"a", out[1].seq + 1}});
    EXPECT_EQ(spool->stats().pending, 2u);  // "old" and "rows" keep their rows
}

TEST_F(SqliteSpoolTest, FullSpoolFailsTheWholeCommitAndKeepsWhatWasThere) {
    auto small = open_sqlite_spool(dir / "small.db", {.max_bytes = 64 * 1024});
    const std::string big = R"({"type":"flag","payload":")" + std::string(20000, 'x') + R"("})";
    int stored = 0;
    bool failed = false;
    for (int i = 0; i < 100 && !failed; ++i) {
        try {
            const std::vector<NewEvent> one = {
                new_event("e" + std::to_string(i), test::numbered(big, i), 1000, {"a"})};
            small->commit(one, {});
            ++stored;
        } catch (const SpoolError& e) {
            failed = true;
            EXPECT_NE(std::string(e.what()).find("full"), std::string::npos) << e.what();
        }
    }
    ASSERT_TRUE(failed) << "a 64 KiB spool took 100 events of 20 KB";
    EXPECT_EQ(small->stats().events, static_cast<std::uint64_t>(stored));
    for (int i = 0; i < stored; ++i) EXPECT_TRUE(small->find("e" + std::to_string(i)));
}

TEST_F(SqliteSpoolTest, CorruptFileIsReportedWithItsPath) {
    test::write_file(dir / "bad.db", std::string(8192, 'z'));
    try {
        open_sqlite_spool(dir / "bad.db");
        FAIL() << "opened a corrupt spool";
    } catch (const SpoolError& e) {
        EXPECT_NE(std::string(e.what()).find((dir / "bad.db").string()), std::string::npos)
            << e.what();
    }
}

// ---- the sink: deliveries driven from the spool -------------------------------------------

// Fails its first `failures` deliveries, then succeeds; counts every call.
class FlakyHandler final : public Handler {
  public:
    FlakyHandler(std::string name, int failures) : Handler(std::move(name)), failures_(failures) {}
    void deliver(const EventPtr& e, DeliveryDone done) override {
        std::lock_guard lock(mutex_);
        ids.push_back(e->id);
        called_.notify_all();
        if (static_cast<int>(ids.size()) <= failures_) {
            done({false, "transient failure " + std::to_string(ids.size())});
        } else {
            done({});
        }
    }
    void deliver_batch(std::span<const EventPtr> events, BatchDone done) override {
        {
            std::lock_guard lock(mutex_);
            batch_sizes.push_back(events.size());
        }
        Handler::deliver_batch(events, std::move(done));
    }
    std::vector<std::string> calls() {
        std::lock_guard lock(mutex_);
        return ids;
    }
    // Whether `n` deliveries were made within 30 s.
    bool wait_for_calls(std::size_t n) {
        std::unique_lock lock(mutex_);
        return called_.wait_for(lock, std::chrono::seconds(30), [&] { return ids.size() >= n; });
    }
    std::vector<std::size_t> batches() {
        std::lock_guard lock(mutex_);
        return batch_sizes;
    }
    void set_failures(int n) {
        std::lock_guard lock(mutex_);
        failures_ = n;
    }

  private:
    std::mutex mutex_;
    std::condition_variable called_;
    int failures_;
    std::vector<std::string> ids;
    std::vector<std::size_t> batch_sizes;
};

class SpoolSinkTest : public ::testing::Test {
  protected:
    void SetUp() override {
        logs = std::make_shared<test::MemorySink>();
        log::configure(log::Format::json, log::Level::debug, logs);
        config.path = dir / "spool.db";
        config.retry.initial_delay = std::chrono::milliseconds(5);
        config.retry.max_delay = std::chrono::milliseconds(20);
        config.retry.max_attempts = 3;
    }
    void TearDown() override {
        sink.reset();
        log::configure(log::Format::json, log::Level::info);
    }

    void start() {
        sink = std::make_unique<SpoolSink>(
            config, 2, pending_limits,
            [this](const std::string& name) -> HandlerPtr {
                std::lock_guard lock(handlers_mutex);
                const auto it = handlers.find(name);
                return it == handlers.end() ? nullptr : it->second;
            },
            nullptr, poll_interval, max_running_bytes, prune_interval);
    }

    void add(const HandlerPtr& h) {
        std::lock_guard lock(handlers_mutex);
        handlers[h->name()] = h;
    }

    SubmitResult submit(const std::string& body, std::vector<HandlerPtr> hs) {
        auto env = parse_envelope(body);
        EXPECT_TRUE(env);
        auto event =
            make_event("/hook", body, std::move(env).value(), std::chrono::system_clock::now());
        std::mutex m;
        std::condition_variable cv;
        std::optional<SubmitResult> result;
        sink->submit(event, std::move(hs), [&](SubmitResult r) {
            std::lock_guard lock(m);
            result = std::move(r);
            cv.notify_all();
        });
        std::unique_lock lock(m);
        cv.wait(lock, [&] { return result.has_value(); });
        return *result;
    }

    // Stores `bodies` as deliveries to a handler "h" that a previous run left pending, starts the
    // sink with its poll an hour away, and checks that each is delivered exactly once.
    std::shared_ptr<FlakyHandler> deliver_backlog(const std::vector<std::string>& bodies) {
        {
            auto spool = open_sqlite_spool(config.path);
            std::vector<NewEvent> events;
            for (std::size_t i = 0; i < bodies.size(); ++i) {
                events.push_back(
                    new_event("left-" + std::to_string(i), bodies[i], now_unix_ms(), {"h"}));
            }
            spool->commit(events, {});
        }
        auto h = std::make_shared<FlakyHandler>("h", 0);
        add(h);
        poll_interval = std::chrono::hours(1);
        start();
        EXPECT_TRUE(sink->wait_idle(std::chrono::seconds(30)));
        auto calls = h->calls();
        EXPECT_EQ(calls.size(), bodies.size());
        std::sort(calls.begin(), calls.end());
        EXPECT_EQ(std::unique(calls.begin(), calls.end()), calls.end()) << "one delivered twice";
        return h;
    }

    // What waits in memory for the next commit is bounded in count and in bytes. Another connection
    // holds the spool's write lock, so the writer stays in one commit while events queue behind it.
    // Submits up to 10 events (test_seq from first_seq, one size while under 90) and returns at
    // which one (from 1) the first refusal came, 0 if none did; checks the others are delivered.
    int first_refusal(const std::shared_ptr<FlakyHandler>& h, int first_seq, std::string& refusal) {
        const auto delivered_before = h->calls().size();
        test::Db other(config.path);
        sqlite3_busy_timeout(other.db, 10000);  // the writer may be committing outcomes
        EXPECT_TRUE(other.exec("BEGIN IMMEDIATE")) << other.error;
        std::mutex m;
        std::condition_variable cv;
        std::vector<SubmitResult> answers;
        int refused_at = 0;
        int submitted = 0;
        for (int i = first_seq; i < first_seq + 10 && refused_at == 0; ++i) {
            auto body = test::numbered(test::sample("flag"), i);  // all of one size
            auto event = make_event("/hook", body, parse_envelope(body).value(),
                                    std::chrono::system_clock::now());
            ++submitted;
            sink->submit(event, {h}, [&](SubmitResult r) {
                std::lock_guard lock(m);
                answers.push_back(std::move(r));
                cv.notify_all();
            });
            std::lock_guard lock(m);  // a refusal is answered at once, before submit() returns
            for (const auto& a : answers) {
                if (a.status != SubmitResult::Status::accepted) {
                    refused_at = submitted;
                    refusal = a.error;
                }
            }
        }
        EXPECT_TRUE(other.exec("COMMIT")) << other.error;
        std::unique_lock lock(m);
        EXPECT_TRUE(cv.wait_for(lock, std::chrono::seconds(20), [&] {
            return answers.size() == static_cast<std::size_t>(submitted);
        }));
        const auto accepted = std::count_if(answers.begin(), answers.end(), [](const auto& a) {
            return a.status == SubmitResult::Status::accepted;
        });
        EXPECT_EQ(accepted, submitted - (refused_at > 0 ? 1 : 0));
        lock.unlock();
        EXPECT_TRUE(sink->wait_idle(std::chrono::seconds(20)));
        EXPECT_EQ(h->calls().size(), delivered_before + static_cast<std::size_t>(accepted));
        return refused_at;
    }

    std::vector<Json> delivery_lines(const std::string& handler) {
        std::vector<Json> out;
        for (const auto& l : logs->lines()) {
            auto j = Json::parse(l);
            if (j["msg"] == "delivery" && j["handler"] == handler) out.push_back(j);
        }
        return out;
    }

    test::TempDir dir;
    SpoolConfig config;
    std::chrono::milliseconds poll_interval = SpoolSink::default_poll_interval;
    std::size_t max_running_bytes = SpoolSink::default_max_running_bytes;
    std::chrono::milliseconds prune_interval = SpoolSink::default_prune_interval;
    PendingLimits pending_limits{1000, Limits::default_max_pending_bytes};
    std::shared_ptr<test::MemorySink> logs;
    std::mutex handlers_mutex;
    std::map<std::string, HandlerPtr> handlers;
    std::unique_ptr<SpoolSink> sink;
};

// The writer answers a commit's requests inside a CompletionBatch, so that a caller that hands
// answers to another thread (the server) can hand over a whole commit's at once.
TEST_F(SpoolSinkTest, AnswersInsideACompletionBatchThatHandsOverAfterTheAnswers) {
    start();
    auto fine = std::make_shared<FlakyHandler>("fine", 0);
    add(fine);
    std::mutex m;
    std::condition_variable cv;
    std::vector<std::string> seen;  // what the callback saw, then what the hand-over ran
    auto note = [&](std::string what) {
        std::lock_guard lock(m);
        seen.push_back(std::move(what));
        cv.notify_all();
    };
    const int key = 0;
    auto answer_via_batch = [&](SubmitResult) {
        auto* batch = CompletionBatch::current();
        note(batch ? "in a batch" : "no batch");
        if (batch == nullptr) return;
        batch->add(
            &key, [&] { note("handed over"); },
            [&] {
                return [&](std::vector<CompletionBatch::Work> work) {
                    note("hand-over of " + std::to_string(work.size()));
                    for (const auto& w : work) w();
                };
            });
    };
    const auto body = test::sample("flag");
    auto env = parse_envelope(body);
    ASSERT_TRUE(env);
    auto event =
        make_event("/hook", body, std::move(env).value(), std::chrono::system_clock::now());
    sink->submit(event, {fine}, answer_via_batch);
    std::unique_lock lock(m);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] {
        return seen.size() == 3 || (!seen.empty() && seen[0] == "no batch");
    }));
    EXPECT_EQ(seen, (std::vector<std::string>{"in a batch", "hand-over of 1", "handed over"}));
}

// Takes each delivery and never reports it, like an asynchronous handler whose work was lost.
class NeverReports final : public Handler {
  public:
    NeverReports() : Handler("never") {}
    void deliver(const EventPtr&, DeliveryDone done) override {
        std::lock_guard lock(mutex);
        kept.push_back(std::move(done));
    }
    std::mutex mutex;
    std::vector<DeliveryDone> kept;  // never called
};

TEST_F(SpoolSinkTest, StopIsBoundedWhenADeliveryNeverReportsAndItStaysPending) {
    auto never = std::make_shared<NeverReports>();
    add(never);
    start();
    ASSERT_EQ(submit(test::sample("flag"), {never}).status, SubmitResult::Status::accepted);
    sink->stop(std::chrono::milliseconds(0), {}, std::chrono::milliseconds(100));
    EXPECT_TRUE(logs->wait_for_record([](Json& j) {
        return j["msg"] == "a delivery never returned; stopping without it" && j["deliveries"] == 1;
    }));
    sink.reset();
    EXPECT_EQ(open_sqlite_spool(config.path)->stats().pending, 1u);
}

// Holds every delivery until opened; counts them.
class GatedHandler final : public Handler {
  public:
    // `max_in_flight`: as an exec or forward handler's is, a few times its max_concurrent.
    explicit GatedHandler(std::size_t max_in_flight = SIZE_MAX)
        : Handler("gated"), max_in_flight_(max_in_flight) {}
    std::size_t max_in_flight() const override { return max_in_flight_; }
    void deliver(const EventPtr&, DeliveryDone done) override {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return open_; });
        ++delivered_;
        lock.unlock();
        done({});
    }
    void open() {
        std::lock_guard lock(mutex_);
        open_ = true;
        cv_.notify_all();
    }
    int delivered() {
        std::lock_guard lock(mutex_);
        return delivered_;
    }

  private:
    const std::size_t max_in_flight_;
    std::mutex mutex_;
    std::condition_variable cv_;
    bool open_ = false;
    int delivered_ = 0;
};

// Events beyond the 1,024 deliveries that run from memory wait in the spool for the poller.
// The drain delivers those too, rather than leave them for the next start.
TEST_F(SpoolSinkTest, TheDrainDeliversWhatWaitsInTheSpoolToo) {
    auto gated = std::make_shared<GatedHandler>();
    add(gated);
    start();
    const int events = 1030;
    std::mutex m;
    std::condition_variable cv;
    int accepted = 0;
    int answered = 0;
    const auto body = test::sample("flag");
    // In rounds, so that no more wait for a commit than the sink takes (1,000 here).
    for (int i = 0; i < events; ++i) {
        const auto numbered = test::numbered(body, i);
        auto env = parse_envelope(numbered);
        ASSERT_TRUE(env);
        sink->submit(
            make_event("/hook", numbered, std::move(env).value(), std::chrono::system_clock::now()),
            {gated}, [&](SubmitResult r) {
                std::lock_guard lock(m);
                accepted += r.status == SubmitResult::Status::accepted;
                ++answered;
                cv.notify_all();
            });
        if ((i + 1) % 500 == 0 || i + 1 == events) {
            std::unique_lock lock(m);
            ASSERT_TRUE(
                cv.wait_for(lock, std::chrono::seconds(30), [&] { return answered == i + 1; }));
        }
    }
    ASSERT_EQ(accepted, events);
    auto stopped = std::async(std::launch::async, [&] { sink->stop(std::chrono::seconds(20)); });
    // Once the drain has begun, new events are refused; then let the deliveries through.
    int probes = 0;
    while (submit(test::numbered(body, events + probes), {gated}).status ==
           SubmitResult::Status::accepted)
        ++probes;
    gated->open();
    ASSERT_EQ(stopped.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    EXPECT_EQ(gated->delivered(), events + probes);
    sink.reset();
    EXPECT_EQ(open_sqlite_spool(config.path)->stats().pending, 0u);
}

// Catching up on more due deliveries than may run at once: once a poller pass has filled every
// slot, the next starts as soon as some free up, not at the next poll. With the poll an hour
// away, a poller that waited for it would deliver the first 1,024 of these and no more.
TEST_F(SpoolSinkTest, ABacklogBeyondTheSlotsIsDeliveredWithoutWaitingForThePoll) {
    const int backlog = 2500;
    std::vector<std::string> bodies;
    for (int i = 0; i < backlog; ++i) bodies.push_back(test::numbered(test::sample("flag"), i));
    const auto h = deliver_backlog(bodies);
    // What a pass finds due goes to the handler in batches, as a commit's events do (a pass that
    // finds a single one delivers it alone).
    const auto batches = h->batches();
    EXPECT_LT(batches.size(), 100u);
    EXPECT_GT(std::accumulate(batches.begin(), batches.end(), std::size_t{0}),
              static_cast<std::size_t>(backlog / 2));
}

// Events accepted while every slot is taken are stored with rows for the poller; it starts them
// once slots free up, not at its next poll (an hour away here).
TEST_F(SpoolSinkTest, EventsBeyondTheSlotsAreDeliveredOnceSlotsFreeUp) {
    auto gated = std::make_shared<GatedHandler>();
    add(gated);
    poll_interval = std::chrono::hours(1);
    start();
    const int events = 1100;
    const auto body = test::sample("flag");
    for (int i = 0; i < events; ++i) {
        ASSERT_EQ(submit(test::numbered(body, i), {gated}).status, SubmitResult::Status::accepted);
    }
    // 1,024 run from memory; the rest have rows.
    EXPECT_EQ(count_rows(config.path, "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"),
              events - static_cast<int>(SpoolSink::max_in_flight));
    gated->open();
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(30)));
    EXPECT_EQ(gated->delivered(), events);
}

// A handler that hangs holds at most its max_in_flight() of the slots; the other handlers'
// deliveries go on, from memory and from the spool, without waiting for the poll (an hour away).
TEST_F(SpoolSinkTest, AHandlerThatHangsDoesNotHoldBackTheOthers) {
    auto gated = std::make_shared<GatedHandler>(64);
    auto fast = std::make_shared<FlakyHandler>("fast", 0);
    add(gated);
    add(fast);
    poll_interval = std::chrono::hours(1);
    start();
    const int events = 1500;  // beyond every slot: 1,024 of the hung handler's would fill them
    const auto body = test::sample("flag");
    for (int i = 0; i < events; ++i) {
        ASSERT_EQ(submit(test::numbered(body, i), {gated, fast}).status,
                  SubmitResult::Status::accepted);
    }
    EXPECT_TRUE(fast->wait_for_calls(events)) << fast->calls().size() << " delivered";
    EXPECT_EQ(gated->delivered(), 0);
    // Only the hung handler's deliveries beyond its 64 wait in the spool; the fast one's all
    // ran from memory, with no row.
    EXPECT_EQ(count_rows(config.path, "SELECT COUNT(*) FROM deliveries WHERE handler = 'gated'"),
              events - 64);
    EXPECT_EQ(count_rows(config.path, "SELECT COUNT(*) FROM deliveries WHERE handler = 'fast'"), 0);
    gated->open();
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(30)));
    EXPECT_EQ(gated->delivered(), events);
    EXPECT_EQ(fast->calls().size(), static_cast<std::size_t>(events));
    const auto st = open_sqlite_spool(config.path)->stats();
    EXPECT_EQ(st.delivered, 2u * events);
    EXPECT_EQ(st.pending, 0u);
}

// The backlog by handler (the /metrics gauge) counts both kinds of waiting deliveries: rows a
// previous run left, counted when the spool opens, and those running from memory, live.
TEST_F(SpoolSinkTest, TheBacklogIsCountedByHandler) {
    {
        auto spool = open_sqlite_spool(config.path);
        std::vector<NewEvent> left;
        for (int i = 0; i < 3; ++i) {
            left.push_back(new_event("left-" + std::to_string(i),
                                     test::numbered(test::sample("flag"), i), now_unix_ms(),
                                     {"gated"}));
        }
        spool->commit(left, {});
    }
    auto gated = std::make_shared<GatedHandler>();
    auto fast = std::make_shared<FlakyHandler>("fast", 0);
    add(gated);
    add(fast);
    poll_interval = std::chrono::hours(1);
    start();
    using Counts = std::vector<std::pair<std::string, std::uint64_t>>;
    EXPECT_EQ(sink->stats().backlog_by_handler, (Counts{{"gated", 3}}));
    EXPECT_TRUE(sink->stats().by_handler);
    for (int i = 10; i < 12; ++i) {
        ASSERT_EQ(submit(test::numbered(test::sample("flag"), i), {gated}).status,
                  SubmitResult::Status::accepted);
    }
    EXPECT_EQ(sink->stats().backlog_by_handler, (Counts{{"gated", 5}}));
    EXPECT_EQ(sink->stats().backlog, 5u);
    gated->open();
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(30)));
    EXPECT_EQ(gated->delivered(), 5);
    // The rows' count is the poller's, every 2 s: the two from memory are gone at once.
    const auto after = sink->stats().backlog_by_handler;
    EXPECT_TRUE(after.empty() || after == (Counts{{"gated", 3}})) << after.size();
}

// A flag event numbered `i` whose body is exactly `size` bytes.
std::string body_of_size(int i, std::size_t size) {
    char head[64];
    std::snprintf(head, sizeof head, R"({"type":"flag","n":"%06d","payload":")", i);
    std::string body = head;
    body += std::string(size - body.size() - 2, 'x') + "\"}";
    return body;
}

constexpr std::size_t large = 10000;  // bytes of body: 4 fit in max_running_bytes below

// The bodies of the deliveries running at once are bounded too (a backlog of large events is
// not read into memory at once): events beyond it are stored with rows, and the poller starts
// them as running deliveries give bytes back, not at its next poll (an hour away here).
TEST_F(SpoolSinkTest, EventsBeyondTheRunningBytesWaitInTheSpoolUntilBytesFreeUp) {
    auto gated = std::make_shared<GatedHandler>();
    add(gated);
    poll_interval = std::chrono::hours(1);
    max_running_bytes = 4 * large + large / 2;
    start();
    const int events = 10;
    for (int i = 0; i < events; ++i) {
        ASSERT_EQ(submit(body_of_size(i, large), {gated}).status, SubmitResult::Status::accepted);
    }
    // 4 run from memory; the rest have rows.
    EXPECT_EQ(count_rows(config.path, "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"),
              events - 4);
    gated->open();
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(30)));
    EXPECT_EQ(gated->delivered(), events);
}

// A backlog of large events after a restart goes to the handler a few at a time, each delivered
// once.
TEST_F(SpoolSinkTest, ABacklogOfLargeEventsIsReadAFewAtATime) {
    std::vector<std::string> bodies;
    for (int i = 0; i < 20; ++i) bodies.push_back(body_of_size(i, large));
    max_running_bytes = 4 * large + large / 2;
    const auto h = deliver_backlog(bodies);
    for (const auto n : h->batches()) EXPECT_LE(n, 4u);
}

TEST_F(SpoolSinkTest, TransientFailuresAreRetriedUntilDelivered) {
    auto flaky = std::make_shared<FlakyHandler>("flaky", 2);
    add(flaky);
    start();
    const auto r = submit(test::sample("flag"), {flaky});
    ASSERT_EQ(r.status, SubmitResult::Status::accepted);
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(20)));
    EXPECT_EQ(flaky->calls(), (std::vector<std::string>{r.id, r.id, r.id}));  // same id each time
    const auto lines = delivery_lines("flaky");
    ASSERT_EQ(lines.size(), 3u);
    EXPECT_EQ(lines[0]["attempt"], 1);
    EXPECT_EQ(lines[0]["status"], "failed");
    EXPECT_EQ(lines[0]["error"], "transient failure 1");
    EXPECT_TRUE(lines[0].contains("retry_in_ms"));
    EXPECT_EQ(lines[1]["attempt"], 2);
    EXPECT_EQ(lines[2]["attempt"], 3);
    EXPECT_EQ(lines[2]["status"], "delivered");
    EXPECT_EQ(open_sqlite_spool(config.path)->stats().delivered, 1u);
}

TEST_F(SpoolSinkTest, AFailingHandlerDoesNotHoldBackAnother) {
    auto broken = std::make_shared<FlakyHandler>("broken", 1000);
    auto fine = std::make_shared<FlakyHandler>("fine", 0);
    add(broken);
    add(fine);
    start();
    for (int i = 0; i < 5; ++i) submit(test::numbered(test::sample("flag"), i), {broken, fine});
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(20)));
    EXPECT_EQ(fine->calls().size(), 5u);
    EXPECT_EQ(broken->calls().size(), 15u);  // 3 attempts each, then dead
}

TEST_F(SpoolSinkTest, DeadLetteredAfterMaxAttemptsThenReplayedByRetry) {
    auto flaky = std::make_shared<FlakyHandler>("flaky", 1000);
    add(flaky);
    start();
    const auto r = submit(test::sample("flag"), {flaky});
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(20)));
    EXPECT_EQ(flaky->calls().size(), 3u);
    auto lines = delivery_lines("flaky");
    ASSERT_EQ(lines.size(), 3u);
    EXPECT_EQ(lines[2]["status"], "dead");
    EXPECT_EQ(lines[2]["level"], "error");
    auto operator_view = open_sqlite_spool(config.path);
    const auto dead = operator_view->list(DeliveryState::dead, "", 10);
    ASSERT_EQ(dead.size(), 1u);
    EXPECT_EQ(dead[0].event_id, r.id);
    EXPECT_EQ(dead[0].last_error, "transient failure 3");

    // The operator fixes the cause and replays, as `spool retry ID` does, while it runs.
    flaky->set_failures(0);
    ASSERT_EQ(operator_view->retry_dead(r.id, now_unix_ms()), 1u);
    ASSERT_TRUE(logs->wait_for([&](const std::string& l) {
        auto j = Json::parse(l);
        return j["msg"] == "delivery" && j["status"] == "delivered" && j["event_id"] == r.id;
    }));
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(20)));
    EXPECT_EQ(operator_view->stats().dead, 0u);
    EXPECT_EQ(operator_view->stats().delivered, 1u);
}

TEST_F(SpoolSinkTest, DuplicateBodyIsAnsweredWithTheOriginalIdAndNotDeliveredAgain) {
    auto h = std::make_shared<FlakyHandler>("h", 0);
    add(h);
    start();
    const auto body = test::sample("flag");
    const auto first = submit(body, {h});
    const auto second = submit(body, {h});
    EXPECT_EQ(second.status, SubmitResult::Status::duplicate);
    EXPECT_EQ(second.id, first.id);
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(20)));
    EXPECT_EQ(h->calls().size(), 1u);
    EXPECT_EQ(submit(test::numbered(body, 1), {h}).status, SubmitResult::Status::accepted);
}

TEST_F(SpoolSinkTest, DuplicatesAreRememberedAcrossARestart) {
    auto h = std::make_shared<FlakyHandler>("h", 0);
    add(h);
    start();
    const auto first = submit(test::sample("flag"), {h});
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(20)));
    sink.reset();
    start();
    const auto again = submit(test::sample("flag"), {h});
    EXPECT_EQ(again.status, SubmitResult::Status::duplicate);
    EXPECT_EQ(again.id, first.id);
}

TEST_F(SpoolSinkTest, DuplicatesArePerEndpoint) {
    auto h = std::make_shared<FlakyHandler>("h", 0);
    add(h);
    start();
    const auto body = test::sample("flag");
    EXPECT_EQ(submit(body, {h}).status, SubmitResult::Status::accepted);
    auto env = parse_envelope(body);
    auto other =
        make_event("/other", body, std::move(env).value(), std::chrono::system_clock::now());
    std::mutex m;
    std::condition_variable cv;
    std::optional<SubmitResult> result;
    sink->submit(other, {h}, [&](SubmitResult r) {
        std::lock_guard lock(m);
        result = std::move(r);
        cv.notify_all();
    });
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return result.has_value(); });
    EXPECT_EQ(result->status, SubmitResult::Status::accepted);
}

TEST_F(SpoolSinkTest, DuplicateWindowZeroTurnsDetectionOff) {
    config.duplicate_window = std::chrono::seconds(0);
    auto h = std::make_shared<FlakyHandler>("h", 0);
    add(h);
    start();
    EXPECT_EQ(submit(test::sample("flag"), {h}).status, SubmitResult::Status::accepted);
    EXPECT_EQ(submit(test::sample("flag"), {h}).status, SubmitResult::Status::accepted);
}

TEST_F(SpoolSinkTest, PendingDeliveriesResumeOnStart) {
    // Left behind by a process that stopped before delivering (one never tried, one mid-backoff,
    // one it was delivering from memory when it was killed).
    {
        auto spool = open_sqlite_spool(config.path);
        const std::vector<NewEvent> events = {
            new_event("left-1", test::sample("flag"), now_unix_ms(), {"h"}),
            new_event("left-2", test::sample("expireFlag"), now_unix_ms(), {"h"}),
            in_memory_event("left-3", test::sample("listCreated"), now_unix_ms(), {"h"})};
        const auto out = spool->commit(events, {});
        // Its backoff runs for an hour; a restart tries it at once all the same.
        const std::vector<DeliveryUpdate> ups = {
            {out[1].seq, "h", DeliveryState::pending, 1, now_unix_ms() + 3600000, "was failing"}};
        spool->commit({}, ups);
    }
    auto h = std::make_shared<FlakyHandler>("h", 0);
    add(h);
    start();
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(20)));
    auto calls = h->calls();
    std::sort(calls.begin(), calls.end());
    EXPECT_EQ(calls, (std::vector<std::string>{"left-1", "left-2", "left-3"}));
    const auto lines = delivery_lines("h");
    ASSERT_EQ(lines.size(), 3u);
    for (auto line : lines) EXPECT_EQ(line["attempt"], line["event_id"] == "left-2" ? 2 : 1);
}

TEST_F(SpoolSinkTest, DeliveryForAHandlerNoLongerConfiguredIsDeadLettered) {
    {
        auto spool = open_sqlite_spool(config.path);
        spool->commit(std::vector<NewEvent>{new_event("orphan", test::sample("flag"), now_unix_ms(),
                                                      {"removed"})},
                      {});
    }
    start();
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(20)));
    const auto dead = open_sqlite_spool(config.path)->list(DeliveryState::dead, "", 10);
    ASSERT_EQ(dead.size(), 1u);
    EXPECT_EQ(dead[0].last_error, "handler \"removed\" is no longer configured");
}

// A round of pruning goes on, one slice after another, until it meets an event too young to
// go, and logs once how many events it deleted.
TEST_F(SpoolSinkTest, PruningDeletesOldEventsSliceBySliceAndLogsTheRoundOnce) {
    const auto two_days_ago = now_unix_ms() - 2 * 86'400'000;
    {
        auto spool = open_sqlite_spool(config.path);
        std::vector<NewEvent> events;
        for (int i = 0; i < 2500; ++i) {  // three slices
            events.push_back(
                new_event("old-" + std::to_string(i), test::sample("flag"), two_days_ago, {}));
        }
        events.push_back(new_event("undelivered", test::sample("flag"), two_days_ago, {"gone"}));
        events.push_back(new_event("young", test::sample("flag"), now_unix_ms(), {}));
        spool->commit(events, {});
    }
    start();
    EXPECT_TRUE(logs->wait_for_record([](Json& r) { return r["msg"] == "spool pruned"; }));
    std::vector<Json> pruned;
    for (const auto& line : logs->lines()) {
        auto r = Json::parse(line);
        if (r["msg"] == "spool pruned") pruned.push_back(r);
    }
    ASSERT_EQ(pruned.size(), 1u);
    EXPECT_EQ(pruned[0]["events"], 2500);
    EXPECT_EQ(count_rows(config.path, "SELECT COUNT(*) FROM events"), 2);
    EXPECT_EQ(count_rows(config.path, "SELECT COUNT(*) FROM events WHERE id = 'young'"), 1);
}

bool is_pruned(Json& r) {
    return r["msg"] == "spool pruned";
}

// A round of pruning starts where the last one met an event kept for its time, so that it does
// not read again, every minute, the events kept for a delivery that is not done (a handler down
// for days keeps them all). A delivery that ends behind that point brings the next round back to
// its event: here a delivery with a row that was running during the first round.
TEST_F(SpoolSinkTest, AnEventWhoseDeliveryEndsAfterARoundIsPrunedByTheNext) {
    const auto two_days_ago = now_unix_ms() - 2 * 86'400'000;
    {
        auto spool = open_sqlite_spool(config.path);
        spool->commit(
            std::vector<NewEvent>{new_event("stuck", test::sample("flag"), two_days_ago, {"gated"}),
                                  new_event("gone", test::sample("flag"), two_days_ago, {}),
                                  new_event("young", test::sample("flag"), now_unix_ms(), {})},
            {});
    }
    auto gated = std::make_shared<GatedHandler>();
    add(gated);
    prune_interval = std::chrono::milliseconds(20);
    start();
    ASSERT_TRUE(logs->wait_for_records(is_pruned, 1));  // "gone"; "stuck" is being delivered
    EXPECT_TRUE(open_sqlite_spool(config.path)->find("stuck"));
    gated->open();
    ASSERT_TRUE(logs->wait_for_records(is_pruned, 2));
    EXPECT_FALSE(open_sqlite_spool(config.path)->find("stuck"));
    EXPECT_TRUE(open_sqlite_spool(config.path)->find("young"));
}

// The same for a delivery run from memory, which has no row: the handler's progress mark passing
// the event is what brings the next round back to it. Retention 0: every event is old at once.
TEST_F(SpoolSinkTest, AnEventDeliveredFromMemoryAfterARoundIsPrunedByTheNext) {
    config.retention = std::chrono::seconds(0);
    auto gated = std::make_shared<GatedHandler>();
    add(gated);
    prune_interval = std::chrono::milliseconds(20);
    start();
    const auto held = submit(test::sample("flag"), {gated});
    ASSERT_EQ(held.status, SubmitResult::Status::accepted);
    ASSERT_EQ(submit(test::sample("listCreated"), {}).status, SubmitResult::Status::accepted);
    // A round deletes the event without handlers and keeps the one being delivered.
    ASSERT_TRUE(logs->wait_for_records(is_pruned, 1));
    EXPECT_TRUE(open_sqlite_spool(config.path)->find(held.id));
    gated->open();
    ASSERT_TRUE(logs->wait_for_records(is_pruned, 2));
    EXPECT_EQ(count_rows(config.path, "SELECT COUNT(*) FROM events"), 0);
}

// One daemon per spool: a second sink on the same file is refused before it resumes anything
// (it would give rows to the first one's running deliveries, which then ran twice), and the
// lock goes with the sink that held it.
TEST_F(SpoolSinkTest, ASecondSinkOnTheSameSpoolIsRefused) {
    start();
    try {
        SpoolSink second(config, 1, pending_limits, [](const std::string&) { return nullptr; });
        FAIL() << "a second sink opened the spool";
    } catch (const SpoolError& e) {
        EXPECT_NE(std::string(e.what()).find(config.path.string() +
                                             " is in use by another sigsci-webhookd (pid " +
                                             std::to_string(::getpid()) + ")"),
                  std::string::npos)
            << e.what();
    }
    EXPECT_TRUE(logs->wait_for_record([](Json& r) { return r["msg"] == "spool opened"; }));
    const auto lines = logs->lines();
    EXPECT_EQ(
        std::count_if(lines.begin(), lines.end(),
                      [](const std::string& l) { return Json::parse(l)["msg"] == "spool opened"; }),
        1);
    sink.reset();
    start();  // a restart takes it again
    EXPECT_EQ(submit(test::sample("flag"), {}).status, SubmitResult::Status::accepted);
}

// An event stamped in the future (by a clock that has since stepped back) is read past, not
// waited for; the next rounds still start at it, and delete it once it is old.
TEST_F(SpoolSinkTest, AnEventStampedInTheFutureIsPrunedOnceItIsOld) {
    config.retention = std::chrono::seconds(0);
    {
        auto spool = open_sqlite_spool(config.path);
        spool->commit(
            std::vector<NewEvent>{
                new_event("future", test::sample("flag"), now_unix_ms() + 2000, {}),
                new_event("gone", test::sample("flag"), now_unix_ms() - 1000, {})},
            {});
    }
    prune_interval = std::chrono::milliseconds(20);
    start();
    ASSERT_TRUE(logs->wait_for_record([&](Json& r) {
        return is_pruned(r) && count_rows(config.path, "SELECT COUNT(*) FROM events") == 0;
    }));
}

TEST_F(SpoolSinkTest, FullSpoolRefusesNewEventsButKeepsRecordingOutcomes) {
    config.max_bytes = 96 * 1024;
    auto h = std::make_shared<FlakyHandler>("h", 0);
    add(h);
    start();
    const std::string big = R"({"type":"flag","payload":")" + std::string(20000, 'x') + R"("})";
    int accepted = 0;
    SubmitResult last;
    for (int i = 0; i < 50; ++i) {
        last = submit(test::numbered(big, i), {h});
        if (last.status != SubmitResult::Status::accepted) break;
        ++accepted;
    }
    ASSERT_EQ(last.status, SubmitResult::Status::failed);
    EXPECT_NE(last.error.find("full"), std::string::npos) << last.error;
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(20)));
    EXPECT_EQ(h->calls().size(), static_cast<std::size_t>(accepted));
    EXPECT_EQ(open_sqlite_spool(config.path)->stats().delivered,
              static_cast<std::uint64_t>(accepted));
}

TEST_F(SpoolSinkTest, EventsWaitingForTheCommitAreBoundedInCount) {
    auto h = std::make_shared<FlakyHandler>("h", 0);
    add(h);
    pending_limits = {2, Limits::default_max_pending_bytes};
    start();
    std::string refusal;
    const int at = first_refusal(h, 10, refusal);
    // Two wait; the commit the writer is stuck in holds at most two more.
    EXPECT_GE(at, 3);
    EXPECT_LE(at, 5);
    EXPECT_EQ(refusal, "too many events waiting for the spool");
}

TEST_F(SpoolSinkTest, EventsWaitingForTheCommitAreBoundedInBytes) {
    auto h = std::make_shared<FlakyHandler>("h", 0);
    add(h);
    const auto size = test::numbered(test::sample("flag"), 10).size();
    pending_limits = {1000, size + size / 2};  // one body fits, not two
    start();
    std::string refusal;
    const int at = first_refusal(h, 10, refusal);
    // One waits; the commit the writer is stuck in holds at most one more.
    EXPECT_GE(at, 2);
    EXPECT_LE(at, 3);
    EXPECT_EQ(refusal,
              "limits.max_pending_bytes reached: too many event bytes waiting for the spool");
    // A reload's limit applies to the next events: four wait, and four more at most commit.
    sink->set_pending_limits({1000, 4 * size});
    const int after = first_refusal(h, 20, refusal);
    EXPECT_GE(after, 5);
    EXPECT_LE(after, 9);
}

// The usual path writes no delivery rows: each success only moves the handler's mark, and the
// spool still shows every delivery as delivered.
TEST_F(SpoolSinkTest, DeliveriesFromMemoryWriteNoRows) {
    auto a = std::make_shared<FlakyHandler>("a", 0);
    auto b = std::make_shared<FlakyHandler>("b", 0);
    add(a);
    add(b);
    start();
    for (int i = 0; i < 20; ++i) {
        ASSERT_EQ(submit(test::numbered(test::sample("flag"), i), {a, b}).status,
                  SubmitResult::Status::accepted);
    }
    ASSERT_TRUE(sink->wait_idle(std::chrono::seconds(20)));
    EXPECT_EQ(a->calls().size(), 20u);
    EXPECT_EQ(b->calls().size(), 20u);
    EXPECT_EQ(count_rows(config.path, "SELECT COUNT(*) FROM deliveries"), 0);
    EXPECT_EQ(count_rows(config.path, "SELECT COUNT(*) FROM progress"), 2);
    const auto st = open_sqlite_spool(config.path)->stats();
    EXPECT_EQ(st.delivered, 40u);
    EXPECT_EQ(st.pending, 0u);
}

}  // namespace
}  // namespace sigsci
