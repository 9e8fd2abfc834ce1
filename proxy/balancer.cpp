#include "proxy/detail/balancer.hpp"

#include "proxy/detail/connection.hpp"
#include "proxy/detail/impl.hpp"
#include "proxy/detail/sockets.hpp"

#include <uv.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace proxy {

// ---- health bookkeeping

void Health::reconcile(const std::vector<vip::Address>& now_resolved, std::uint64_t now, std::uint64_t keep_absent_ms)
{
    for (const auto& a : now_resolved) addresses[a].last_seen = now;
    for (auto it = addresses.begin(); it != addresses.end();) {
        if (it->second.last_seen + keep_absent_ms >= now && (keep_absent_ms > 0 || std::ranges::find(now_resolved, it->first) != now_resolved.end())) {
            ++it;
            continue;
        }
        gone_connect_failures += it->second.connect_failures;
        gone_handshake_failures += it->second.handshake_failures;
        gone_ejections += it->second.ejections;
        gone_checks_passed += it->second.checks_passed;
        gone_checks_failed += it->second.checks_failed;
        it = addresses.erase(it);
    }
}

void Health::forget_checks()
{
    auto forget = [](AddressHealth& h) {
        h.check_down = false;
        h.checks_failed_in_row = 0;
        h.checks_passed_in_row = 0;
    };
    forget(self);
    for (auto& [address, h] : addresses) forget(h);
}

std::vector<std::pair<std::string, std::string>> HealthSubject::fields() const
{
    std::vector<std::pair<std::string, std::string>> f{{"mesh", mesh}, {"name", name}, {"endpoint", endpoint}};
    if (address) f.emplace_back("address", host_port(*address, port));
    return f;
}

namespace {

std::string seconds_text(std::uint64_t ms)
{
    if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
    return std::to_string(ms) + "ms";
}

Options::Event make_event(Options::Event::Level level, std::string message, const HealthSubject& who)
{
    Options::Event e;
    e.level = level;
    e.message = std::move(message);
    e.fields = who.fields();
    return e;
}

}  // namespace

void record_failure(AddressHealth& h, const HealthPolicy& p, FailureKind kind, const std::string& reason, std::uint64_t now,
                    std::int64_t wall, const HealthSubject& who, std::vector<Options::Event>& events)
{
    ++(kind == FailureKind::connect ? h.connect_failures : h.handshake_failures);
    h.last_failure = wall;
    h.last_failure_reason = reason;
    if (!h.failing) {
        // Once per healthy-to-failing transition, however many clients then fail on it.
        h.failing = true;
        auto e = make_event(Options::Event::Level::warn, "endpoint failing", who);
        e.fields.emplace_back("kind", kind == FailureKind::connect ? "connect" : "handshake");
        e.fields.emplace_back("reason", reason);
        events.push_back(std::move(e));
    }
    if (++h.consecutive_failures < p.eject_after) return;
    std::uint64_t ms = std::min(p.eject_base_ms << std::min<std::uint32_t>(h.backoff_steps, 20), p.eject_max_ms);
    h.ejected_until = now + ms;
    ++h.backoff_steps;
    ++h.ejections;
    auto e = make_event(Options::Event::Level::info, "endpoint ejected", who);
    e.fields.emplace_back("failures", std::to_string(h.consecutive_failures));
    e.fields.emplace_back("for", seconds_text(ms));
    e.fields.emplace_back("reason", reason);
    events.push_back(std::move(e));
    h.consecutive_failures = 0;
}

void record_success(AddressHealth& h, const HealthSubject& who, std::vector<Options::Event>& events)
{
    if (h.failing) events.push_back(make_event(Options::Event::Level::info, "endpoint healthy again", who));
    h.failing = false;
    h.consecutive_failures = 0;
    h.backoff_steps = 0;
    h.ejected_until = 0;
}

void record_check(AddressHealth& h, const HealthPolicy& p, bool passed, const std::string& error, std::int64_t wall,
                  const HealthSubject& who, std::vector<Options::Event>& events)
{
    h.last_check = wall;
    if (passed) {
        ++h.checks_passed;
        h.checks_failed_in_row = 0;
        h.last_check_error.clear();
        if (++h.checks_passed_in_row >= p.healthy_threshold && h.check_down) {
            h.check_down = false;
            events.push_back(make_event(Options::Event::Level::info, "endpoint passes its health checks again", who));
        }
        return;
    }
    ++h.checks_failed;
    h.checks_passed_in_row = 0;
    h.last_check_error = error;
    h.last_failure = wall;
    h.last_failure_reason = "health check: " + error;
    if (++h.checks_failed_in_row >= p.unhealthy_threshold && !h.check_down) {
        h.check_down = true;
        auto e = make_event(Options::Event::Level::warn, "endpoint fails its health checks", who);
        e.fields.emplace_back("checks", std::to_string(h.checks_failed_in_row));
        e.fields.emplace_back("reason", error);
        events.push_back(std::move(e));
    }
}

std::optional<vip::Address> pick_address(Health& h, const std::vector<vip::Address>& answer, std::uint64_t now,
                                         const std::function<bool(const vip::Address&)>& tried,
                                         const std::function<bool(const vip::Address&)>& hopeless)
{
    if (answer.empty()) return std::nullopt;
    // In one order whatever the answer's (each loop resolves for itself, and servers rotate
    // records), so that the cursor every loop shares goes round the addresses evenly.
    std::vector<vip::Address> addrs = answer;
    std::ranges::sort(addrs);
    std::size_t& next = h.next_address;
    auto usable = [&](const vip::Address& a) {
        auto it = h.addresses.find(a);
        return it == h.addresses.end() || it->second.usable(now);
    };
    // Passes from the most to the least wanted: usable and untried, untried, anything but
    // hopeless.
    auto pass = [&](int level) -> std::optional<vip::Address> {
        for (auto family : {vip::Family::v4, vip::Family::v6}) {
            std::vector<std::size_t> of_family;
            for (std::size_t i = 0; i < addrs.size(); ++i)
                if (addrs[i].family == family) of_family.push_back(i);
            for (std::size_t k = 0; k < of_family.size(); ++k) {
                const auto& a = addrs[of_family[(next + k) % of_family.size()]];
                bool ok = level == 0 ? usable(a) && !tried(a) : level == 1 ? !tried(a) : !hopeless(a);
                if (ok) {
                    next += k + 1;
                    return a;
                }
            }
        }
        return std::nullopt;
    };
    for (int level = 0; level < 3; ++level)
        if (auto a = pass(level)) return a;
    return std::nullopt;
}

bool target_usable(const Health& h, bool is_name, std::uint64_t now)
{
    if (!is_name) return h.self.usable(now);
    if (h.addresses.empty()) return true;  // not resolved yet, or never tried: worth a try
    return std::ranges::any_of(h.addresses, [&](const auto& kv) { return kv.second.usable(now); });
}

std::int64_t wall_ms()
{
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::string rfc3339(std::int64_t unix_ms)
{
    if (unix_ms <= 0) return {};
    std::time_t secs = static_cast<std::time_t>(unix_ms / 1000);
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    char buf[96];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                  tm.tm_min, tm.tm_sec, static_cast<int>(unix_ms % 1000));
    return buf;
}

// ---- balancing

// Targets are told apart by their Health: the same endpoint in a Routing put in force since
// is the same target.
bool Connection::used_up(const Target& t) const
{
    return std::ranges::any_of(tried, [&](const auto& x) { return x->health == t.health; });
}

bool Connection::is_hopeless(const Target& t) const
{
    return std::ranges::any_of(hopeless, [&](const auto& x) { return x->health == t.health; });
}

std::shared_ptr<const Target> Connection::pick()
{
    std::uint64_t now = now_ms();
    std::lock_guard lock(service->mutex);
    if (!service->routing) return nullptr;
    auto routing = service->routing;  // the route in force now, even if it changed since the connection began
    const auto& targets = routing->targets;
    auto usable = [&](const Target& t, bool panic) {
        return (retrying || !used_up(t)) && !is_hopeless(t) && (panic || target_usable(*t.health, t.is_name(), now));
    };
    auto choose = [&]() -> std::shared_ptr<const Target> {
        for (bool panic : {false, true}) {
            // The lowest priority with a usable target, then round robin inside it.
            for (std::size_t i = 0; i < targets.size();) {
                std::uint8_t prio = targets[i]->endpoint.priority;
                std::size_t end = i;
                while (end < targets.size() && targets[end]->endpoint.priority == prio) ++end;
                std::size_t count = end - i;
                std::size_t& cur = service->cursor[prio];
                for (std::size_t k = 0; k < count; ++k) {
                    const auto& t = targets[i + (cur + k) % count];
                    if (usable(*t, panic)) {
                        cur = (cur + k + 1) % count;
                        return t;
                    }
                }
                if (panic) break;  // panic mode: only the lowest priority
                i = end;
            }
        }
        return nullptr;
    };
    if (auto t = choose()) return t;
    // Everything was tried once and attempts are left: go round again (a single
    // endpoint gets connectAttempts tries, as Envoy's max_connect_attempts gives).
    if (!retrying && !tried.empty()) {
        retrying = true;
        return choose();
    }
    return nullptr;
}

// The address of a DNS-named target to try next (see pick_address). The name's health
// follows its addresses: those gone from every answer for a while drop theirs.
std::optional<vip::Address> Connection::choose_address(const std::shared_ptr<const Target>& t, const std::vector<vip::Address>& addrs)
{
    auto tried_here = [&](const vip::Address& a) {
        return std::ranges::any_of(tried_addresses, [&](const auto& x) { return x.first->health == t->health && x.second == a; });
    };
    auto hopeless_here = [&](const vip::Address& a) {
        return std::ranges::any_of(hopeless_addresses, [&](const auto& x) { return x.first->health == t->health && x.second == a; });
    };
    std::lock_guard lock(service->mutex);
    t->health->reconcile(addrs, now_ms(), Health::absent_grace_ms);
    auto chosen = pick_address(*t->health, addrs, now_ms(), tried_here, hopeless_here);
    if (!chosen) {
        hopeless.push_back(t);
        return std::nullopt;
    }
    tried_addresses.emplace_back(t, *chosen);
    if (std::ranges::all_of(addrs, tried_here)) tried.push_back(t);
    return chosen;
}

HealthPolicy Proxy::Impl::health_policy() const
{
    HealthPolicy p;
    p.eject_after = options.eject_after;
    p.eject_base_ms = static_cast<std::uint64_t>(options.eject_base.count());
    p.eject_max_ms = static_cast<std::uint64_t>(options.eject_max.count());
    p.healthy_threshold = options.health_check.healthy_threshold;
    p.unhealthy_threshold = options.health_check.unhealthy_threshold;
    return p;
}

void Proxy::Impl::emit(std::vector<Options::Event>& events)
{
    for (auto& e : events) event(std::move(e));
    events.clear();
}

HealthSubject Connection::subject(const Target& t, const std::optional<vip::Address>& address) const
{
    HealthSubject who;
    if (auto routing = service->routing) {
        who.mesh = routing->route.mesh;
        who.name = routing->route.name;
    }
    who.endpoint = t.label;
    who.address = address;
    who.port = t.endpoint.port.value_or(dialled_port);
    return who;
}

void Connection::record_failure(const Target& t, const std::optional<vip::Address>& address, FailureKind kind,
                                const std::string& reason)
{
    std::vector<Options::Event> events;
    {
        std::lock_guard lock(service->mutex);
        record_failure_of(*t.health, t.is_name() ? address : std::nullopt, impl->health_policy(), kind, reason, now_ms(), wall_ms(),
                          subject(t, t.is_name() ? address : std::nullopt), events);
    }
    impl->emit(events);
}

void Connection::record_success(const Target& t, const std::optional<vip::Address>& address)
{
    std::vector<Options::Event> events;
    {
        std::lock_guard lock(service->mutex);
        auto a = t.is_name() ? address : std::nullopt;
        if (a && !t.health->addresses.contains(*a)) return;  // left the name's answer meanwhile
        proxy::record_success(t.health->at(a), subject(t, a), events);
    }
    impl->emit(events);
}

void record_failure_of(Health& h, const std::optional<vip::Address>& address, const HealthPolicy& p, FailureKind kind,
                       const std::string& reason, std::uint64_t now, std::int64_t wall, const HealthSubject& who,
                       std::vector<Options::Event>& events)
{
    if (address && !h.addresses.contains(*address)) return;  // left the name's answer meanwhile
    record_failure(h.at(address), p, kind, reason, now, wall, who, events);
}

}  // namespace proxy
