#include "sigsci/log_handler.hpp"

#include "sigsci/handler_registry.hpp"
#include "sigsci/log.hpp"

namespace sigsci {

namespace {
constexpr std::size_t summary_string_chars = 200;

// "[N items]" or "{N keys}". Appended rather than "[" + to_string(...): g++ 12 warns about
// that form at -O2 (-Wrestrict, a false positive, GCC bug 105329).
std::string counted(char open, std::size_t n, const char* what) {
    std::string s(1, open);
    s += std::to_string(n);
    s += what;
    return s;
}

Json summarize_value(const Json& v) {
    if (v.is_array()) return counted('[', v.size(), " items]");
    if (v.is_object()) return counted('{', v.size(), " keys}");
    if (v.is_string() && v.get_ref<const std::string&>().size() > summary_string_chars) {
        return v.get_ref<const std::string&>().substr(0, summary_string_chars) + "...";
    }
    return v;
}
}  // namespace

Json summarize_payload(const Json& payload) {
    if (!payload.is_object()) return summarize_value(payload);
    Json out = Json::object();
    for (const auto& [key, value] : payload.items()) out[key] = summarize_value(value);
    return out;
}

void LogHandler::deliver(const EventPtr& event, DeliveryDone done) {
    log::Fields fields{{"handler", name()},           {"event_id", event->id},
                       {"endpoint", event->endpoint}, {"type", event->envelope.type},
                       {"created", event->created()}, {"link", event->link()}};
    if (mode_ == PayloadMode::full) fields["payload"] = event->payload();
    if (mode_ == PayloadMode::summary) fields["payload"] = summarize_payload(event->payload());
    log::info("event", fields);
    done({});
}

HandlerSpec parse_log_handler(const std::string& name, ConfigObject& cfg, const ConfigContext&) {
    PayloadMode mode = PayloadMode::full;
    std::string mode_name = "full";
    if (auto n = cfg.get("payload")) {
        mode_name = n->as_string();
        if (mode_name == "full")
            mode = PayloadMode::full;
        else if (mode_name == "summary")
            mode = PayloadMode::summary;
        else if (mode_name == "none")
            mode = PayloadMode::none;
        else
            n->fail("must be \"full\", \"summary\" or \"none\"");
    }
    cfg.finish();
    return HandlerSpec{name, "log", "payload: " + mode_name,
                       [name, mode] { return std::make_shared<LogHandler>(name, mode); }};
}

}  // namespace sigsci
