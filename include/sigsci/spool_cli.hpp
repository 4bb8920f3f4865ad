#pragma once
// `sigsci-webhookd spool ...`: operator commands against the spool, safe while the daemon runs
// (SQLite WAL: readers never block the writer; writes wait for it briefly).
#include <cstdint>
#include <optional>
#include <string>

namespace CLI {
class App;
}

namespace sigsci {

struct SpoolCommand {
    std::string config_file;
    std::string spool_path;  // alternative to config_file
    std::string action;      // stats, list, show, retry, purge
    bool dead = false;
    bool pending = false;
    std::string type;
    std::size_t limit = 100;
    std::string id;
    bool all_dead = false;
    std::string before;
};

// Adds the `spool` subcommand tree to `app`, filling `cmd`.
CLI::App* add_spool_commands(CLI::App& app, SpoolCommand& cmd);

// Runs a parsed command; returns the exit code (0 ok, 1 failure, 2 usage).
int run_spool_command(const SpoolCommand& cmd);

}  // namespace sigsci
