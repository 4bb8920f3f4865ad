#include "sigsci/cli.hpp"

#include <CLI/CLI.hpp>

#include <csignal>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "sigsci/config.hpp"
#include "sigsci/daemon.hpp"
#include "sigsci/log.hpp"
#include "sigsci/signature.hpp"
#include "sigsci/spool_cli.hpp"

namespace sigsci {

namespace {

constexpr int exit_ok = 0;
constexpr int exit_runtime = 1;
constexpr int exit_usage = 2;

int run_daemon(const std::string& config_file) {
    auto config = load_config(config_file);
    if (!config) {
        std::cerr << "sigsci-webhookd: " << config.error() << "\n";
        return exit_usage;
    }
    log::configure(config.value().log.format, config.value().log.level);
    for (const auto& w : config.value().warnings) log::warn("config warning", {{"warning", w}});
    // Writes to a vanished peer must fail with EPIPE, not kill the daemon.
    std::signal(SIGPIPE, SIG_IGN);
    // SIGTERM, SIGINT and SIGHUP wait (blocked) until run_until_signalled() has its handler in
    // place: opening the spool already resumes deliveries, and a SIGTERM in that window must
    // drain, not kill. Threads started meanwhile inherit the mask, so the main thread takes them.
    Daemon::block_signals();
    try {
        Daemon daemon(std::move(config).value());
        daemon.run_until_signalled();
    } catch (const std::exception& e) {
        log::error("startup failed", {{"error", e.what()}});
        return exit_runtime;
    }
    return exit_ok;
}

int check_config(const std::string& config_file) {
    auto loaded = load_config(config_file);
    if (!loaded) {
        std::cerr << "sigsci-webhookd: " << loaded.error() << "\n";
        return exit_runtime;
    }
    const Config& c = loaded.value();
    std::cout << c.file.string() << ": OK\n";
    std::cout << "listen:";
    for (const auto& l : c.listen) std::cout << " " << l.address;
    std::cout << "\nthreads: " << c.effective_threads() << (c.threads == 0 ? " (one per core)" : "")
              << "\n";
    for (const auto& ep : c.endpoints) {
        std::cout << "endpoint " << ep.path << ": " << ep.signing_keys.size() << " signing key(s), "
                  << ep.routes.size() << " route(s)\n";
        for (const auto& r : ep.routes) {
            std::cout << "  [";
            for (std::size_t i = 0; i < r.types.size(); ++i)
                std::cout << (i ? ", " : "") << r.types[i];
            std::cout << "] ->";
            for (const auto& h : r.handlers) std::cout << " " << h;
            std::cout << "\n";
        }
    }
    for (const auto& h : c.handlers)
        std::cout << "handler " << h.name << " (" << h.kind << "): " << h.summary << "\n";
    if (c.spool.enabled) {
        std::cout << "spool: " << c.spool.path.string() << " (retention "
                  << c.spool.retention.count() << " s, duplicates within "
                  << c.spool.duplicate_window.count() << " s, " << c.spool.retry.max_attempts
                  << " attempts)\n";
    } else {
        std::cout << "spool: disabled (events are kept in memory only)\n";
    }
    for (const auto& w : c.warnings) std::cout << "warning: " << w << "\n";
    return exit_ok;
}

int sign(const std::string& key_file, const std::string& input_file) {
    auto key = read_key_file(key_file);
    if (!key) {
        std::cerr << "sigsci-webhookd: " << key.error() << "\n";
        return exit_runtime;
    }
    std::string body;
    if (input_file.empty() || input_file == "-") {
        body.assign(std::istreambuf_iterator<char>(std::cin), {});
    } else {
        std::ifstream in(input_file, std::ios::binary);
        if (!in) {
            std::cerr << "sigsci-webhookd: cannot read " << input_file << "\n";
            return exit_runtime;
        }
        body.assign(std::istreambuf_iterator<char>(in), {});
    }
    std::cout << to_hex(hmac_sha256(key.value(), body)) << "\n";
    return exit_ok;
}

}  // namespace

int run_cli(int argc, char** argv) {
    CLI::App app{"sigsci-webhookd: receives Signal Sciences Generic Webhook notifications"};
    app.set_version_flag("--version", std::string("sigsci-webhookd ") + SIGSCI_VERSION);
    std::string config_file;
    app.add_option("-c,--config", config_file, "Config file (JSON)");

    auto* run = app.add_subcommand("run", "Run the daemon (the default)");
    run->add_option("-c,--config", config_file, "Config file (JSON)")->required();
    auto* check = app.add_subcommand("check", "Validate a config file and print a summary");
    check->add_option("-c,--config", config_file, "Config file (JSON)")->required();
    std::string key_file;
    std::string input_file;
    auto* sign_cmd = app.add_subcommand("sign", "Print the X-SigSci-Signature of FILE (or stdin)");
    sign_cmd->add_option("--key-file", key_file, "File holding the signing key")->required();
    sign_cmd->add_option("file", input_file, "Body to sign (default: stdin)");
    SpoolCommand spool_cmd;
    auto* spool = add_spool_commands(app, spool_cmd);
    app.require_subcommand(0, 1);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e);
        return code == 0 ? exit_ok : exit_usage;
    }
    if (*check) return check_config(config_file);
    if (*sign_cmd) return sign(key_file, input_file);
    if (*spool) return run_spool_command(spool_cmd);
    if (config_file.empty()) {
        std::cerr << "sigsci-webhookd: --config is required\n" << app.help();
        return exit_usage;
    }
    return run_daemon(config_file);
}

}  // namespace sigsci
