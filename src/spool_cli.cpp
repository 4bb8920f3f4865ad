#include "sigsci/spool_cli.hpp"

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>

#include "sigsci/clock.hpp"
#include "sigsci/config.hpp"
#include "sigsci/envelope.hpp"
#include "sigsci/event.hpp"
#include "sigsci/spool.hpp"

namespace sigsci {

namespace {

std::string format_ms(std::int64_t ms) {
    return format_rfc3339_ms(ms);
}

Json delivery_json(const StoredDelivery& d) {
    Json j{{"handler", d.handler}, {"state", to_string(d.state)}, {"attempts", d.attempts}};
    if (d.state == DeliveryState::pending) j["next_attempt_at"] = format_ms(d.next_attempt_ms);
    if (!d.last_error.empty()) j["last_error"] = d.last_error;
    return j;
}

}  // namespace

CLI::App* add_spool_commands(CLI::App& app, SpoolCommand& cmd) {
    auto* spool =
        app.add_subcommand("spool", "Inspect and repair the spool (safe while the daemon runs)");
    spool->require_subcommand(1);
    auto add_source = [&cmd](CLI::App* sub) {
        auto* c = sub->add_option("-c,--config", cmd.config_file, "Config file naming the spool");
        auto* p = sub->add_option("--spool", cmd.spool_path, "Spool database path");
        c->excludes(p);
        p->excludes(c);
    };
    auto* stats = spool->add_subcommand("stats", "Counts of events and deliveries by state");
    add_source(stats);
    stats->callback([&cmd] { cmd.action = "stats"; });

    auto* list = spool->add_subcommand("list", "Deliveries, oldest first");
    add_source(list);
    auto* dead = list->add_flag("--dead", cmd.dead, "Only dead-lettered deliveries");
    auto* pending = list->add_flag("--pending", cmd.pending, "Only deliveries not yet done");
    dead->excludes(pending);
    list->add_option("--type", cmd.type, "Only events of this type");
    list->add_option("--limit", cmd.limit, "At most this many rows (default 100)")
        ->check(CLI::Range(1, 1000000));
    list->callback([&cmd] { cmd.action = "list"; });

    auto* show = spool->add_subcommand("show", "One event: its envelope and every delivery");
    add_source(show);
    show->add_option("id", cmd.id, "Event id")->required();
    show->callback([&cmd] { cmd.action = "show"; });

    auto* retry = spool->add_subcommand(
        "retry", "Make dead deliveries pending again, with a fresh attempt budget");
    add_source(retry);
    auto* id = retry->add_option("id", cmd.id, "Event id");
    auto* all = retry->add_flag("--all-dead", cmd.all_dead, "Every dead delivery");
    id->excludes(all);
    all->excludes(id);
    retry->callback([&cmd] { cmd.action = "retry"; });

    auto* purge = spool->add_subcommand(
        "purge", "Delete events received before a date, whatever their state");
    add_source(purge);
    purge->add_option("--before", cmd.before, "YYYY-MM-DD or RFC 3339 time")->required();
    purge->callback([&cmd] { cmd.action = "purge"; });
    return spool;
}

int run_spool_command(const SpoolCommand& cmd) {
    std::filesystem::path path = cmd.spool_path;
    if (path.empty()) {
        if (cmd.config_file.empty()) {
            std::cerr << "sigsci-webhookd: spool: give --config FILE or --spool PATH\n";
            return 2;
        }
        auto cfg = load_config(cmd.config_file);
        if (!cfg) {
            std::cerr << "sigsci-webhookd: " << cfg.error() << "\n";
            return 2;
        }
        path = cfg.value().spool.path;
    }
    if (cmd.action == "retry" && cmd.id.empty() && !cmd.all_dead) {
        std::cerr << "sigsci-webhookd: spool retry: give an event id or --all-dead\n";
        return 2;
    }
    std::optional<std::int64_t> before;
    if (cmd.action == "purge") {
        before = parse_date_ms(cmd.before);
        if (!before) {
            std::cerr << "sigsci-webhookd: spool purge: --before: not a date: " << cmd.before
                      << "\n";
            return 2;
        }
    }
    if (!std::filesystem::exists(path)) {
        std::cerr << "sigsci-webhookd: spool " << path.string() << " does not exist\n";
        return 1;
    }
    try {
        auto spool = open_sqlite_spool(path);
        if (cmd.action == "stats") {
            const auto st = spool->stats();
            std::cout << "spool: " << path.string() << "\n"
                      << "events: " << st.events << "\n"
                      << "deliveries pending: " << st.pending << "\n"
                      << "deliveries delivered: " << st.delivered << "\n"
                      << "deliveries dead: " << st.dead << "\n";
            if (st.oldest_pending_ms) {
                std::cout << "oldest pending received at: " << format_ms(*st.oldest_pending_ms)
                          << "\n";
            }
            for (const auto& h : st.by_handler) {
                std::string name;  // quoted and escaped: a config key can be any text
                append_json_string(name, h.handler);
                std::cout << "handler " << name << ": pending " << h.pending << ", delivered "
                          << h.delivered << ", dead " << h.dead << "\n";
            }
        } else if (cmd.action == "list") {
            std::optional<DeliveryState> state;
            if (cmd.dead) state = DeliveryState::dead;
            if (cmd.pending) state = DeliveryState::pending;
            for (const auto& d : spool->list(state, cmd.type, cmd.limit)) {
                Json row{{"id", d.event_id},
                         {"received_at", d.received_at},
                         {"endpoint", d.endpoint},
                         {"type", d.type}};
                const Json delivery = delivery_json(d);  // items() refers to it: keep it alive
                for (const auto& [k, v] : delivery.items()) row[k] = v;
                std::cout << row.dump(-1, ' ', false, Json::error_handler_t::replace) << "\n";
            }
        } else if (cmd.action == "show") {
            const auto event = spool->find(cmd.id);
            if (!event) {
                std::cerr << "sigsci-webhookd: no event " << cmd.id << " in the spool\n";
                return 1;
            }
            Json out{{"id", event->id},
                     {"received_at", event->received_at},
                     {"endpoint", event->endpoint},
                     {"type", event->type}};
            Json deliveries = Json::array();
            for (const auto& d : spool->deliveries_of(event->id))
                deliveries.push_back(delivery_json(d));
            out["deliveries"] = deliveries;
            auto envelope = envelope_tree(event->body);
            out["envelope"] = envelope.is_discarded() ? Json(event->body) : std::move(envelope);
            std::cout << out.dump(2, ' ', false, Json::error_handler_t::replace) << "\n";
        } else if (cmd.action == "retry") {
            if (!cmd.id.empty() && !spool->find(cmd.id)) {
                std::cerr << "sigsci-webhookd: no event " << cmd.id << " in the spool\n";
                return 1;
            }
            const auto n = spool->retry_dead(cmd.all_dead ? std::string() : cmd.id, now_unix_ms());
            std::cout << n << " dead deliveries made pending again\n";
        } else if (cmd.action == "purge") {
            const auto n = spool->purge(*before);
            std::cout << n << " events received before " << format_ms(*before) << " deleted\n";
        }
    } catch (const SpoolError& e) {
        std::cerr << "sigsci-webhookd: " << e.what() << "\n";
        return 1;
    }
    return 0;
}

}  // namespace sigsci
