#pragma once
// `exec`: runs an operator's command for each event, without a shell, with the raw envelope on
// stdin. See docs/handlers.md for the contract a command can rely on.
#include <chrono>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "sigsci/handler.hpp"

namespace sigsci {

struct ExecConfig {
    std::vector<std::string> command;  // command[0] is an absolute path (resolved at load)
    std::chrono::milliseconds timeout{10000};
    std::chrono::milliseconds kill_grace{2000};
    std::size_t max_concurrent = 4;
    std::map<std::string, std::string> env;
    std::filesystem::path cwd;  // empty: the daemon's working directory
};

// The argv for one event: elements that are exactly "{/json/pointer}" are replaced by that value
// of the envelope (strings as they are, anything else as compact JSON). An error names the
// element and pointer that did not resolve.
Result<std::vector<std::string>> expand_argv(const std::vector<std::string>& command,
                                             const Json& envelope);

// The child's whole environment: a fixed base, the event's SIGSCI_* variables, then `env`.
std::vector<std::string> child_environment(const Event& event,
                                           const std::map<std::string, std::string>& env);

// Output kept per stream; the rest is read and counted, never buffered.
inline constexpr std::size_t max_captured_output = 64 * 1024;

class ExecHandler final : public Handler, public std::enable_shared_from_this<ExecHandler> {
  public:
    ExecHandler(std::string name, ExecConfig config);
    void deliver(const EventPtr& event, DeliveryDone done) override;
    void terminate() override;

    std::size_t running() const;
    std::size_t max_in_flight() const override {
        return config_.max_concurrent * in_flight_per_concurrent;
    }

    struct Job;

  private:
    // A delivery waiting for a slot: only the event and its callback. The command is made from
    // the event (which may parse its JSON) and the process's state allocated once a slot is
    // free, so a queue behind a slow command holds no more than its events.
    struct Waiting {
        EventPtr event;
        DeliveryDone done;
    };
    bool launch(Waiting w);
    void start(std::shared_ptr<Job> job);
    void finished(const std::shared_ptr<Job>& job);

    ExecConfig config_;
    mutable std::mutex mutex_;
    std::size_t running_ = 0;
    std::deque<Waiting> waiting_;  // beyond max_concurrent, in arrival order
    std::vector<std::weak_ptr<Job>> active_;
    bool terminated_ = false;
};

}  // namespace sigsci
