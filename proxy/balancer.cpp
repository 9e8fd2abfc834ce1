#include "proxy/detail/balancer.hpp"

#include "proxy/detail/connection.hpp"
#include "proxy/detail/impl.hpp"

#include <uv.h>

#include <algorithm>

namespace proxy {

// ---- balancing

bool Connection::used_up(const Target& t) const
{
    return std::ranges::any_of(tried, [&](const auto& x) { return x.get() == &t; });
}

Target* Connection::pick()
{
    std::uint64_t now = uv_now(impl->loop);
    auto& targets = service->targets;
    auto usable = [&](const Target& t, bool panic) {
        return (retrying || !used_up(t)) && (panic || t.ejected_until <= now);
    };
    for (bool panic : {false, true}) {
        // The lowest priority with a usable target, then round robin inside it.
        for (std::size_t i = 0; i < targets.size();) {
            std::uint8_t prio = targets[i]->endpoint.priority;
            std::size_t end = i;
            while (end < targets.size() && targets[end]->endpoint.priority == prio) ++end;
            std::size_t count = end - i;
            std::size_t& cur = service->cursor[prio];
            for (std::size_t k = 0; k < count; ++k) {
                Target* t = targets[i + (cur + k) % count].get();
                if (usable(*t, panic)) {
                    cur = (cur + k + 1) % count;
                    return t;
                }
            }
            if (panic) break;  // panic mode: only the lowest priority
            i = end;
        }
    }
    // Everything was tried once and attempts are left: go round again (a single
    // endpoint gets connectAttempts tries, as Envoy's max_connect_attempts gives).
    if (!retrying && !tried.empty()) {
        retrying = true;
        return pick();
    }
    return nullptr;
}

// The address of a DNS-named target to try next: IPv4 first (round robin within the
// family), another address on each attempt, round again once all were tried.
std::optional<vip::Address> Connection::choose_address(const std::shared_ptr<Target>& t, const std::vector<vip::Address>& addrs)
{
    auto tried_here = [&](const vip::Address& a) {
        return std::ranges::any_of(tried_addresses, [&](const auto& x) { return x.first == t && x.second == a; });
    };
    std::optional<vip::Address> chosen;
    for (auto family : {vip::Family::v4, vip::Family::v6}) {
        std::vector<std::size_t> of_family;
        for (std::size_t i = 0; i < addrs.size(); ++i)
            if (addrs[i].family == family) of_family.push_back(i);
        for (std::size_t k = 0; k < of_family.size() && !chosen; ++k) {
            const auto& a = addrs[of_family[(t->next_address + k) % of_family.size()]];
            if (!tried_here(a)) {
                chosen = a;
                t->next_address += k + 1;
            }
        }
        if (chosen) break;
    }
    if (!chosen) chosen = addrs[t->next_address++ % addrs.size()];
    tried_addresses.emplace_back(t, *chosen);
    if (std::ranges::all_of(addrs, tried_here)) tried.push_back(t);
    return chosen;
}

void Connection::record_failure(Target& t)
{
    ++t.connect_failures;
    if (++t.consecutive_failures < impl->options.eject_after) return;
    auto base = static_cast<std::uint64_t>(impl->options.eject_base.count());
    auto cap = static_cast<std::uint64_t>(impl->options.eject_max.count());
    std::uint64_t ms = base << std::min<std::uint32_t>(t.backoff_steps, 20);
    t.ejected_until = uv_now(impl->loop) + std::min(ms, cap);
    ++t.backoff_steps;
    ++t.ejections;
    t.consecutive_failures = 0;
}

void Connection::record_success(Target& t)
{
    t.consecutive_failures = 0;
    t.backoff_steps = 0;
    t.ejected_until = 0;
}

}  // namespace proxy
