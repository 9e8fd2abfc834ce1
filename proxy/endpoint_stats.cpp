#include "proxy/detail/endpoint_stats.hpp"

namespace proxy::detail {

EndpointStatsTable::~EndpointStatsTable()
{
    if (global_) global_->fetch_sub(counted_, std::memory_order_relaxed);
}

std::shared_ptr<EndpointStats> EndpointStatsTable::get(std::string_view endpoint, std::string_view address,
                                                       std::atomic<std::size_t>& global)
{
    std::lock_guard lock(mutex_);
    global_ = &global;
    auto e = endpoints_.find(endpoint);
    if (e == endpoints_.end()) e = endpoints_.emplace(std::string(endpoint), Endpoint{}).first;
    auto& by_address = e->second.by_address;
    if (auto it = by_address.find(address); it != by_address.end()) return it->second;
    // The global count is taken first, then compared, so that two tables adding at once
    // cannot both take the last place.
    bool room = e->second.addresses < max_addresses_per_endpoint;
    if (room && global.fetch_add(1, std::memory_order_relaxed) >= max_address_series) {
        global.fetch_sub(1, std::memory_order_relaxed);
        room = false;
    }
    if (room) {
        ++e->second.addresses;
        ++counted_;
    } else {
        // One "other" per endpoint: bounded by the configuration, not by what names resolve to.
        address = other_address;
        if (auto it = by_address.find(address); it != by_address.end()) return it->second;
    }
    auto s = std::make_shared<EndpointStats>();
    s->endpoint = e->first;
    s->address = std::string(address);
    by_address.emplace(s->address, s);
    return s;
}

std::vector<std::shared_ptr<const EndpointStats>> EndpointStatsTable::all() const
{
    std::lock_guard lock(mutex_);
    std::vector<std::shared_ptr<const EndpointStats>> out;
    for (const auto& [endpoint, e] : endpoints_)
        for (const auto& [address, s] : e.by_address) out.push_back(s);
    return out;
}

}  // namespace proxy::detail
