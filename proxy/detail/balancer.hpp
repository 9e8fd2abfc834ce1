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
#include <functional>
#include <optional>
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

// The health of one place connections go: an IP or unix endpoint, or one address of a DNS
// name (as Envoy's STRICT_DNS makes a host of each address). Shared by every loop: an
// address ejected after failures on one loop's connections is ejected for all. Every field
// is under its Service's mutex.
struct AddressHealth {
    std::uint32_t consecutive_failures = 0;
    std::uint64_t connect_failures = 0;    // TCP connects failed or timed out
    std::uint64_t handshake_failures = 0;  // TLS handshakes failed or timed out
    std::uint64_t ejections = 0;
    std::uint32_t backoff_steps = 0;  // ejections since the last success
    std::uint64_t ejected_until = 0;  // now_ms()
    bool failing = false;             // failed since its last success (the event was logged)
    std::int64_t last_failure = 0;    // Unix milliseconds; 0: never
    std::string last_failure_reason;
    // Active health checks.
    std::uint32_t checks_failed_in_row = 0;
    std::uint32_t checks_passed_in_row = 0;
    bool check_down = false;  // failed unhealthyThreshold checks in a row: takes no connection
    std::uint64_t checks_passed = 0, checks_failed = 0;
    std::int64_t last_check = 0;  // Unix milliseconds; 0: never checked
    std::string last_check_error;  // "" after a check passed
    std::uint64_t last_seen = 0;   // now_ms() of the last DNS answer that had it (DNS names)

    bool ejected(std::uint64_t now) const { return ejected_until > now; }
    // Takes new connections outside panic mode.
    bool usable(std::uint64_t now) const { return !ejected(now) && !check_down; }
};

// An endpoint's health: its own for an IP or unix endpoint, one per address for a DNS name.
struct Health {
    AddressHealth self;  // IP and unix endpoints
    // DNS names: the addresses the name resolves to now (those that leave drop their health,
    // those that stay keep it), and the counts of those that left, so that the name's totals
    // never go down.
    std::map<vip::Address, AddressHealth> addresses;
    std::uint64_t gone_connect_failures = 0, gone_handshake_failures = 0, gone_ejections = 0;
    std::uint64_t gone_checks_passed = 0, gone_checks_failed = 0;
    std::size_t next_address = 0;  // DNS names: round robin over the addresses

    // The record of `address` (a DNS name's), or of the endpoint itself (nullopt, or an IP).
    AddressHealth& at(const std::optional<vip::Address>& address)
    {
        return address ? addresses[*address] : self;
    }
    // A DNS name's addresses are now `now_resolved` (at `now`): new ones start healthy, and
    // those absent from every answer for `keep_absent_ms` leave. Each loop resolves for
    // itself and a name may answer a different subset each time, so an address missing from
    // one answer must keep its failures and ejection for a while, or another loop's answer
    // would wipe them.
    void reconcile(const std::vector<vip::Address>& now_resolved, std::uint64_t now = 0, std::uint64_t keep_absent_ms = 0);
    // Active checks are off for this endpoint's route now: what they concluded no longer holds.
    void forget_checks();
    // How long an address no answer has had keeps its health.
    static constexpr std::uint64_t absent_grace_ms = 300000;
};

// What to do with a failure, and how to report it.
struct HealthPolicy {
    std::uint32_t eject_after = 3;
    std::uint64_t eject_base_ms = 5000;
    std::uint64_t eject_max_ms = 300000;
    std::uint32_t healthy_threshold = 2;    // active checks
    std::uint32_t unhealthy_threshold = 3;
};
enum class FailureKind { connect, handshake };
// Who an event is about: mesh, name, endpoint (as configured), address (DNS names).
struct HealthSubject {
    std::string mesh, name, endpoint;
    std::optional<vip::Address> address;
    std::uint16_t port = 0;
    std::vector<std::pair<std::string, std::string>> fields() const;
};
// The bookkeeping, under the service's mutex; the events it appends are logged after the
// mutex is let go. `now` is now_ms(), `wall` Unix milliseconds.
void record_failure(AddressHealth& h, const HealthPolicy& p, FailureKind kind, const std::string& reason, std::uint64_t now,
                    std::int64_t wall, const HealthSubject& who, std::vector<Options::Event>& events);
// The same for `address` of a DNS name (nullopt: the endpoint itself); nothing when the
// address has left the name's answer meanwhile.
void record_failure_of(Health& h, const std::optional<vip::Address>& address, const HealthPolicy& p, FailureKind kind,
                       const std::string& reason, std::uint64_t now, std::int64_t wall, const HealthSubject& who,
                       std::vector<Options::Event>& events);
void record_success(AddressHealth& h, const HealthSubject& who, std::vector<Options::Event>& events);
void record_check(AddressHealth& h, const HealthPolicy& p, bool passed, const std::string& error, std::int64_t wall,
                  const HealthSubject& who, std::vector<Options::Event>& events);
// The address of a DNS name to try next among `addrs`: IPv4 first, round robin within the
// family from `next`; usable ones (not ejected, not failing checks) not yet `tried` first,
// then any not tried (panic among the addresses), then any not `hopeless`. nullopt when
// every address is hopeless.
std::optional<vip::Address> pick_address(Health& h, const std::vector<vip::Address>& addrs, std::uint64_t now,
                                         const std::function<bool(const vip::Address&)>& tried,
                                         const std::function<bool(const vip::Address&)>& hopeless);
// Takes new connections outside panic mode: an IP or unix endpoint that is usable, a DNS
// name with a usable address (or none known yet).
bool target_usable(const Health& h, bool is_name, std::uint64_t now);
// Unix milliseconds as RFC 3339 UTC ("2026-11-27T19:40:00.123Z"); "" for 0.
std::string rfc3339(std::int64_t unix_ms);
// Unix milliseconds now.
std::int64_t wall_ms();

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
