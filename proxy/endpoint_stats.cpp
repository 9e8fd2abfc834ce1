#include "proxy/detail/endpoint_stats.hpp"

namespace proxy::detail {

EndpointStatsTable::~EndpointStatsTable()
{
    if (global_) global_->fetch_sub(counted_, std::memory_order_relaxed);
}

std::shared_ptr<EndpointStats> EndpointStatsTable::get(const std::string& endpoint, const std::string& address,
                                                       std::atomic<std::size_t>& global)
{
    std::lock_guard lock(mutex_);
    global_ = &global;
    auto key = std::pair{endpoint, address};
    if (auto it = series_.find(key); it != series_.end()) return it->second;
    auto& mine = per_endpoint_[endpoint];
    // The global count is taken first, then compared, so that two tables adding at once
    // cannot both take the last place.
    bool room = mine < max_addresses_per_endpoint;
    if (room && global.fetch_add(1, std::memory_order_relaxed) >= max_address_series) {
        global.fetch_sub(1, std::memory_order_relaxed);
        room = false;
    }
    if (room) {
        ++mine;
        ++counted_;
    } else {
        // One "other" per endpoint: bounded by the configuration, not by what names resolve to.
        key.second = other_address;
        if (auto it = series_.find(key); it != series_.end()) return it->second;
    }
    auto s = std::make_shared<EndpointStats>();
    s->endpoint = key.first;
    s->address = key.second;
    series_.emplace(std::move(key), s);
    return s;
}

std::vector<std::shared_ptr<const EndpointStats>> EndpointStatsTable::all() const
{
    std::lock_guard lock(mutex_);
    std::vector<std::shared_ptr<const EndpointStats>> out;
    out.reserve(series_.size());
    for (const auto& [key, s] : series_) out.push_back(s);
    return out;
}

}  // namespace proxy::detail
