#include "proxy/detail/balancer.hpp"

#include "proxy/detail/connection.hpp"
#include "proxy/detail/impl.hpp"

#include <uv.h>

#include <algorithm>

namespace proxy {

// ---- balancing

// Targets are told apart by their Health: the same endpoint in a Routing put in force since
// is the same target.
bool Connection::used_up(const Target& t) const
{
    return std::ranges::any_of(tried, [&](const auto& x) { return x->health == t.health; });
}

std::shared_ptr<const Target> Connection::pick()
{
    std::uint64_t now = now_ms();
    std::lock_guard lock(service->mutex);
    if (!service->routing) return nullptr;
    auto routing = service->routing;  // the route in force now, even if it changed since the connection began
    const auto& targets = routing->targets;
    auto usable = [&](const Target& t, bool panic) {
        return (retrying || !used_up(t)) && (panic || t.health->ejected_until <= now);
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

// The address of a DNS-named target to try next: IPv4 first (round robin within the
// family), another address on each attempt, round again once all were tried.
std::optional<vip::Address> Connection::choose_address(const std::shared_ptr<const Target>& t, const std::vector<vip::Address>& addrs)
{
    auto tried_here = [&](const vip::Address& a) {
        return std::ranges::any_of(tried_addresses, [&](const auto& x) { return x.first->health == t->health && x.second == a; });
    };
    std::lock_guard lock(service->mutex);  // the target's cursor over its addresses
    std::size_t& next = t->health->next_address;
    std::optional<vip::Address> chosen;
    for (auto family : {vip::Family::v4, vip::Family::v6}) {
        std::vector<std::size_t> of_family;
        for (std::size_t i = 0; i < addrs.size(); ++i)
            if (addrs[i].family == family) of_family.push_back(i);
        for (std::size_t k = 0; k < of_family.size() && !chosen; ++k) {
            const auto& a = addrs[of_family[(next + k) % of_family.size()]];
            if (!tried_here(a)) {
                chosen = a;
                next += k + 1;
            }
        }
        if (chosen) break;
    }
    if (!chosen) chosen = addrs[next++ % addrs.size()];
    tried_addresses.emplace_back(t, *chosen);
    if (std::ranges::all_of(addrs, tried_here)) tried.push_back(t);
    return chosen;
}

void Connection::record_failure(const Target& t)
{
    std::lock_guard lock(service->mutex);
    Health& h = *t.health;
    ++h.connect_failures;
    if (++h.consecutive_failures < impl->options.eject_after) return;
    auto base = static_cast<std::uint64_t>(impl->options.eject_base.count());
    auto cap = static_cast<std::uint64_t>(impl->options.eject_max.count());
    std::uint64_t ms = base << std::min<std::uint32_t>(h.backoff_steps, 20);
    h.ejected_until = now_ms() + std::min(ms, cap);
    ++h.backoff_steps;
    ++h.ejections;
    h.consecutive_failures = 0;
}

void Connection::record_success(const Target& t)
{
    std::lock_guard lock(service->mutex);
    Health& h = *t.health;
    h.consecutive_failures = 0;
    h.backoff_steps = 0;
    h.ejected_until = 0;
}

}  // namespace proxy
