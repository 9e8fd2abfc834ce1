// Figures per endpoint address for /metrics: open connections, bytes each way, and the
// latency of connects and TLS handshakes, for the address a connection actually reached
// (an IP literal's, one of a DNS name's addresses, a unix socket's path).
//
// Threads. A Service holds one EndpointStatsTable, shared by every loop. A connection looks
// its EndpointStats up once, when its connect succeeds (under the table's own mutex, not the
// Service's), and keeps a shared_ptr to it; from then on it only adds to relaxed atomics.
// status() copies them under the same mutex.
//
// Bound. A DNS name may resolve to ever new addresses: an endpoint keeps at most
// max_addresses_per_endpoint address series, and the whole proxy at most max_address_series;
// past either, further addresses are counted in the endpoint's series with address="other".
// Series live as long as their MES (its Service).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace proxy::detail {

constexpr std::size_t max_addresses_per_endpoint = 16;
constexpr std::size_t max_address_series = 4096;
inline constexpr const char* other_address = "other";

// Upper bounds of the latency buckets, in microseconds: 1 ms to 10 s (Prometheus' `le`),
// then +Inf.
inline constexpr std::array<std::uint64_t, 13> latency_bounds_us = {
    1'000, 2'500, 5'000, 10'000, 25'000, 50'000, 100'000, 250'000, 500'000, 1'000'000, 2'500'000, 5'000'000, 10'000'000};

class LatencyHistogram {
public:
    void observe(std::uint64_t us)
    {
        std::size_t k = 0;
        while (k < latency_bounds_us.size() && us > latency_bounds_us[k]) ++k;
        buckets_[k].fetch_add(1, std::memory_order_relaxed);
        sum_us_.fetch_add(us, std::memory_order_relaxed);
    }
    // Cumulative counts per bound, the last one (+Inf) being the count.
    std::vector<std::uint64_t> cumulative() const
    {
        std::vector<std::uint64_t> out;
        std::uint64_t total = 0;
        for (const auto& b : buckets_) out.push_back(total += b.load(std::memory_order_relaxed));
        return out;
    }
    std::uint64_t sum_us() const { return sum_us_.load(std::memory_order_relaxed); }

private:
    std::array<std::atomic<std::uint64_t>, latency_bounds_us.size() + 1> buckets_{};
    std::atomic<std::uint64_t> sum_us_{0};
};

struct EndpointStats {
    std::string endpoint;  // as configured (Target::label)
    std::string address;   // as connected, or "other"
    std::atomic<std::uint64_t> active{0};
    std::atomic<std::uint64_t> bytes_up{0};    // client to endpoint
    std::atomic<std::uint64_t> bytes_down{0};  // endpoint to client
    LatencyHistogram connect;
    LatencyHistogram tls_handshake;
};

class EndpointStatsTable {
public:
    EndpointStatsTable() = default;
    EndpointStatsTable(const EndpointStatsTable&) = delete;
    EndpointStatsTable& operator=(const EndpointStatsTable&) = delete;
    ~EndpointStatsTable();

    // The series of `endpoint` at `address`, made on first use; "other" past the bounds.
    // `global` counts the address series of every table (the proxy's), and must outlive
    // this table.
    std::shared_ptr<EndpointStats> get(std::string_view endpoint, std::string_view address, std::atomic<std::size_t>& global);
    // Every series, by endpoint then address.
    std::vector<std::shared_ptr<const EndpointStats>> all() const;

private:
    struct Endpoint {
        std::map<std::string, std::shared_ptr<EndpointStats>, std::less<>> by_address;
        std::size_t addresses = 0;  // series other than "other"
    };
    mutable std::mutex mutex_;
    std::map<std::string, Endpoint, std::less<>> endpoints_;  // looked up without a copy of the key
    std::atomic<std::size_t>* global_ = nullptr;
    std::size_t counted_ = 0;  // of `global_`, the series this table made
};

}  // namespace proxy::detail
