// The proxy's state per route and per endpoint: the route in force with its targets, their
// health (failures in a row, ejection with backoff), the round-robin cursors, and the
// counters. The choice of a target for a connection and the ejection bookkeeping are in
// balancer.cpp.
//
// Threads. A Service is shared by every loop that carries its connections. What a route
// change replaces (the route, its targets, its TLS context) is an immutable Routing, swapped
// whole under the service's mutex; a connection takes the one in force when it needs it and
// may keep it after a change. What connections change (health, cursors, TLS failure counts)
// is under the same mutex, taken once or twice per connection, never per byte. Counters are
// relaxed atomics.
#pragma once

#include "proxy/proxy.hpp"

#include "proxy/detail/endpoint_stats.hpp"
#include "proxy/detail/tls.hpp"

#include <uv.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace proxy {

// Milliseconds on a monotonic clock every thread shares (a loop's uv_now is its own).
inline std::uint64_t now_ms() { return uv_hrtime() / 1000000; }

// A counter that several loops add to: a relaxed fetch_add, once per connection or per read.
class SharedCounter {
public:
    SharedCounter& operator+=(std::uint64_t n)
    {
        value_.fetch_add(n, std::memory_order_relaxed);
        return *this;
    }
    SharedCounter& operator-=(std::uint64_t n)
    {
        value_.fetch_sub(n, std::memory_order_relaxed);
        return *this;
    }
    SharedCounter& operator++() { return *this += 1; }
    SharedCounter& operator--() { return *this -= 1; }
    // Adds one and returns the value before.
    std::uint64_t fetch_increment() { return value_.fetch_add(1, std::memory_order_relaxed); }
    std::uint64_t load() const { return value_.load(std::memory_order_relaxed); }
    operator std::uint64_t() const { return load(); }

private:
    std::atomic<std::uint64_t> value_{0};
};

// ---- Targets and services ------------------------------------------------------------------

// An endpoint's health, shared by every loop: a target ejected after failures on one loop's
// connections is ejected for all. Every field is under its Service's mutex.
struct Health {
    std::uint32_t consecutive_failures = 0;
    std::uint64_t connect_failures = 0;
    std::uint64_t ejections = 0;
    std::uint32_t backoff_steps = 0;  // ejections since the last success
    std::uint64_t ejected_until = 0;  // now_ms()
    std::size_t next_address = 0;     // DNS names: round robin over the addresses
};

// One endpoint of a Routing. Immutable; its Health is kept across route changes while the
// endpoint's address stays, and tells targets apart (the same endpoint in two Routings has
// one Health).
struct Target {
    conf::Endpoint endpoint;
    std::string label;  // "10.0.0.1:443", "example.com", "unix:///run/x.sock"
    std::shared_ptr<Health> health;

    bool is_name() const { return endpoint.kind == conf::AddressKind::hostname; }
    bool same_place(const conf::Endpoint& e) const
    {
        return e.address == endpoint.address && e.kind == endpoint.kind && e.port == endpoint.port;
    }
};

// A route as put in force, with what is built from it: never changed once published.
struct Routing {
    Route route;
    std::vector<std::shared_ptr<const Target>> targets;  // by priority, then as configured
    std::shared_ptr<detail::TlsContext> tls;
    std::string tls_error;
};

struct Listener;

struct Service {
    // Bind mode, the control loop's thread only.
    std::vector<Listener*> listeners;
    std::string listen_error;

    // Under `mutex`: the Routing in force (null until the first route), the round-robin
    // cursors, the TLS failure counts, and the Health of every target.
    mutable std::mutex mutex;
    std::shared_ptr<const Routing> routing;
    std::map<std::uint8_t, std::size_t> cursor;  // round robin per priority
    std::map<std::string, std::uint64_t> tls_failures;

    SharedCounter active, total, refused, failed, bytes_up, bytes_down;
    SharedCounter tls_handshakes, tls_resumed;
    // Per endpoint address, under a mutex of its own (see endpoint_stats.hpp).
    detail::EndpointStatsTable endpoint_stats;

    std::shared_ptr<const Routing> current() const
    {
        std::lock_guard lock(mutex);
        return routing;
    }

    struct Change {
        bool changed = false;
        bool fresh = false;            // the service had no route before
        std::string tls_error_before;  // its TLS settings' error before and after
        std::string tls_error;
    };
    // Puts `r` in force: a new Routing (its targets keep the health of the same endpoints
    // before; a new TLS context only when the TLS settings changed), unless nothing changed.
    Change set_route(Route r)
    {
        std::lock_guard lock(mutex);
        const Routing* old = routing.get();
        Change c;
        c.fresh = !old;
        if (old) c.tls_error_before = old->tls_error;
        if (old && old->route == r && old->targets.empty() == r.endpoints.empty()) return c;
        c.changed = true;
        auto next = std::make_shared<Routing>();
        const Route empty;
        const Route& before = old ? old->route : empty;
        bool tls_changed = !(r.tls == before.tls && r.tls_ca_pem == before.tls_ca_pem && r.tls_cert_pem == before.tls_cert_pem &&
                             r.tls_key_pem == before.tls_key_pem && r.protocol == before.protocol && r.tls_error == before.tls_error);
        if (tls_changed || !old || old->targets.empty()) {
            // A new context (new trust, new certificate) for new connections; open ones keep theirs.
            next->tls_error = r.tls_error;
            if (r.tls && r.tls->enabled && next->tls_error.empty()) {
                auto made = detail::TlsContext::make(*r.tls, r.protocol, {r.tls_ca_pem, r.tls_cert_pem, r.tls_key_pem});
                if (made) next->tls = *made;
                else next->tls_error = made.error();
            }
        } else {
            next->tls = old->tls;
            next->tls_error = old->tls_error;
        }
        std::vector<bool> taken(old ? old->targets.size() : 0, false);
        for (const auto& e : r.endpoints) {
            auto t = std::make_shared<Target>();
            t->endpoint = e;
            for (std::size_t k = 0; old && k < old->targets.size(); ++k)
                if (!taken[k] && old->targets[k]->same_place(e)) {
                    taken[k] = true;
                    t->health = old->targets[k]->health;
                    break;
                }
            if (!t->health) t->health = std::make_shared<Health>();
            t->label = e.address;
            if (e.kind != conf::AddressKind::unix_socket && e.port) {
                t->label = e.kind == conf::AddressKind::ipv6 ? "[" + e.address + "]:" + std::to_string(*e.port)
                                                              : e.address + ":" + std::to_string(*e.port);
            }
            next->targets.push_back(std::move(t));
        }
        std::ranges::stable_sort(next->targets, {}, [](const auto& t) { return t->endpoint.priority; });
        next->route = std::move(r);
        c.tls_error = next->tls_error;
        routing = std::move(next);
        return c;
    }
};

}  // namespace proxy
