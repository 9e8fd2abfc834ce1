// The proxy's state per route and per endpoint: the targets with their health (failures in
// a row, ejection with backoff), the round-robin cursors, and the counters. The choice of a
// target for a connection and the ejection bookkeeping are in balancer.cpp.
#pragma once

#include "proxy/proxy.hpp"

#include "proxy/detail/tls.hpp"

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace proxy {

// ---- Targets and services ------------------------------------------------------------------

struct Target {
    conf::Endpoint endpoint;
    std::string label;  // "10.0.0.1:443", "example.com", "unix:///run/x.sock"
    std::uint32_t consecutive_failures = 0;
    std::uint64_t connect_failures = 0;
    std::uint64_t ejections = 0;
    std::uint32_t backoff_steps = 0;  // ejections since the last success
    std::uint64_t ejected_until = 0;  // uv_now() ms
    std::size_t next_address = 0;     // DNS names: round robin over the addresses

    bool is_name() const { return endpoint.kind == conf::AddressKind::hostname; }
    bool same_place(const conf::Endpoint& e) const
    {
        return e.address == endpoint.address && e.kind == endpoint.kind && e.port == endpoint.port;
    }
};

struct Listener;

struct Service {
    Route route;
    std::vector<std::shared_ptr<Target>> targets;  // by priority, then as configured
    std::map<std::uint8_t, std::size_t> cursor;      // round robin per priority
    std::vector<Listener*> listeners;
    std::string listen_error;
    std::uint64_t active = 0, total = 0, refused = 0, failed = 0, bytes_up = 0, bytes_down = 0;
    std::shared_ptr<detail::TlsContext> tls;
    std::string tls_error;
    std::map<std::string, std::uint64_t> tls_failures;
    std::uint64_t tls_handshakes = 0, tls_resumed = 0;

    void set_route(Route r)
    {
        bool tls_changed = !(r.tls == route.tls && r.tls_ca_pem == route.tls_ca_pem && r.tls_cert_pem == route.tls_cert_pem &&
                             r.tls_key_pem == route.tls_key_pem && r.protocol == route.protocol && r.tls_error == route.tls_error);
        if (tls_changed || targets.empty()) {
            // A new context (new trust, new certificate) for new connections; open ones keep theirs.
            tls.reset();
            tls_error = r.tls_error;
            if (r.tls && r.tls->enabled && tls_error.empty()) {
                auto made = detail::TlsContext::make(*r.tls, r.protocol, {r.tls_ca_pem, r.tls_cert_pem, r.tls_key_pem});
                if (made) tls = *made;
                else tls_error = made.error();
            }
        }
        std::vector<std::shared_ptr<Target>> next;
        for (const auto& e : r.endpoints) {
            std::shared_ptr<Target> t;
            for (auto& old : targets)
                if (old && old->same_place(e)) {
                    t = old;
                    old.reset();
                    break;
                }
            if (!t) {
                t = std::make_shared<Target>();
                t->label = e.address;
                if (e.kind != conf::AddressKind::unix_socket && e.port) {
                    t->label = e.kind == conf::AddressKind::ipv6 ? "[" + e.address + "]:" + std::to_string(*e.port)
                                                                  : e.address + ":" + std::to_string(*e.port);
                }
            }
            t->endpoint = e;
            next.push_back(std::move(t));
        }
        std::ranges::stable_sort(next, {}, [](const auto& t) { return t->endpoint.priority; });
        targets = std::move(next);
        route = std::move(r);
    }
};

}  // namespace proxy
