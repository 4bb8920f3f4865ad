#include "sigsci/event.hpp"

#include "sigsci/clock.hpp"

namespace sigsci {

EventPtr make_event(std::string endpoint, std::string body, Envelope envelope,
                    std::chrono::system_clock::time_point received) {
    auto event = std::make_shared<Event>();
    event->id = new_event_id(received);
    event->received_at = format_rfc3339_ms(received);
    event->endpoint = std::move(endpoint);
    event->body = std::move(body);
    event->envelope = std::move(envelope);
    return event;
}

Json archive_record(const Event& event) {
    Json record = Json::object();
    record["id"] = event.id;
    record["received_at"] = event.received_at;
    record["endpoint"] = event.endpoint;
    for (const auto& [key, value] : event.envelope.doc.items()) {
        if (key == "id" || key == "received_at" || key == "endpoint") continue;
        record[key] = value;
    }
    return record;
}

}  // namespace sigsci
