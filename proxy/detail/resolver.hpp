// A small stub resolver on the proxy's loop for DNS-named endpoints: A and AAAA asked
// together over UDP (fresh socket and ID per attempt, answers matched on ID, source and
// question), a timeout per nameserver then the next, and the records' smallest TTL —
// bounded by min/max — deciding when a watched name is asked again. A name that stops
// resolving keeps its last addresses (as Envoy's STRICT_DNS does) and is retried after the
// minimum TTL. getaddrinfo would give no TTL and needs a thread per lookup. One per loop:
// only that loop's thread calls it, except addresses().
#pragma once

#include "conf/conf.hpp"
#include "vip/vip.hpp"

#include <uv.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace proxy::detail {

class Resolver {
public:
    struct Entry {
        std::vector<vip::Address> addresses;  // A first, then AAAA
        std::string error;                    // the last failure, "" after a success
        std::uint64_t expires = 0;            // uv_now() milliseconds; 0 until first asked
        bool resolved_once = false;
        std::uint32_t failures = 0;           // lookups failed in a row
    };
    // Called with the entry once a lookup finishes (or at once when the entry is fresh).
    using Callback = std::function<void(const Entry&)>;

    Resolver(uv_loop_t* loop, std::vector<conf::HostPort> servers, std::chrono::milliseconds timeout,
             std::chrono::milliseconds min_ttl, std::chrono::milliseconds max_ttl);
    ~Resolver();
    Resolver(const Resolver&) = delete;
    Resolver& operator=(const Resolver&) = delete;

    // Addresses for `name`: fresh ones at once; else a lookup, and `done` when it ends.
    // Stale addresses are still handed out (at once) while the refresh runs.
    void resolve(const std::string& name, Callback done);
    // The names routes use: once a connection has asked for one, it is looked up again
    // whenever its TTL runs out; names no route uses are forgotten.
    void watch(const std::set<std::string>& names);
    const Entry* find(const std::string& name) const;
    // The addresses in use for `name` (none while it has not resolved): unlike the rest,
    // callable from any thread (the status page's).
    std::vector<vip::Address> addresses(const std::string& name) const;
    // Cancels lookups and closes handles; callbacks waiting are dropped.
    void stop();

    struct Lookup;

private:
    void start_lookup(const std::string& name);
    void finish(const std::string& name, std::vector<vip::Address> addresses, std::uint32_t ttl, std::string error);
    void arm_refresh();

    void publish(const std::string& name, const std::vector<vip::Address>* addresses);

    uv_loop_t* loop_;
    std::vector<conf::HostPort> servers_;
    std::chrono::milliseconds timeout_, min_ttl_, max_ttl_;
    std::map<std::string, Entry> entries_;
    std::map<std::string, std::vector<Callback>> waiting_;
    std::map<std::string, Lookup*> in_flight_;
    std::set<std::string> watched_;
    std::vector<std::string> queued_;  // waiting for a free lookup slot
    static constexpr std::size_t max_in_flight = 64;
    uv_timer_t* refresh_timer_ = nullptr;
    std::uint64_t armed_for_ = 0;      // when the refresh timer fires; 0 when it is not armed
    bool stopped_ = false;
    // A copy of each entry's addresses for other threads, kept as entries change.
    mutable std::mutex published_mutex_;
    std::map<std::string, std::vector<vip::Address>> published_;  // under published_mutex_

    friend struct Lookup;
};

}  // namespace proxy::detail
