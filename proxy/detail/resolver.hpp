// A small stub resolver on the proxy's loop for DNS-named endpoints: A and AAAA asked
// together over UDP (fresh socket and ID per attempt, answers matched on ID, source and
// question), a timeout per nameserver then the next, and the records' smallest TTL —
// bounded by min/max — deciding when a watched name is asked again. A name that stops
// resolving keeps its last addresses (as Envoy's STRICT_DNS does) and is retried after the
// minimum TTL. getaddrinfo would give no TTL and needs a thread per lookup. One per loop:
// only that loop's thread calls it, except addresses().
//
// The hosts file comes first, as with getaddrinfo and c-ares: a name it lists (exact name or
// alias, case-insensitive) takes its addresses from there, both families, and never goes to
// DNS. The file is parsed once for every loop (HostsFile, shared) and read again when it
// changes, which is checked at most once a second. What every loop's resolver learns of a
// name is told to NameEvents, shared too, which logs a change once however many loops saw it.
#pragma once

#include "conf/conf.hpp"
#include "vip/vip.hpp"

#include <uv.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace proxy::detail {

// A hosts file (/etc/hosts): "ADDRESS NAME [ALIAS...]" lines, `#` comments. Thread-safe.
class HostsFile {
public:
    using Table = std::map<std::string, std::vector<vip::Address>>;  // lower-case name: A first, then AAAA
    // `path` "": no hosts file. `recheck`: how often, at most, the file is looked at again.
    explicit HostsFile(std::string path, std::chrono::milliseconds recheck = std::chrono::seconds(1));
    // The addresses the file gives `name`; nullopt when it does not list it. Any thread;
    // may stat (and then read) the file, at most once per `recheck` across all threads.
    std::optional<std::vector<vip::Address>> lookup(std::string_view name);
    // The text of a hosts file, as a table. Lines that are not an IP address followed by
    // names are skipped (an IPv6 address with a zone, "fe80::1%eth0", too).
    static Table parse(std::string_view text);
    // Bigger files are read up to this size (a blocklist of a million names is still read).
    static constexpr std::size_t max_size = std::size_t{64} << 20;

private:
    void refresh();  // under mutex_

    std::string path_;
    std::chrono::milliseconds recheck_;
    std::mutex mutex_;
    std::chrono::steady_clock::time_point checked_{};  // under mutex_
    bool ever_checked_ = false;                        // under mutex_
    struct Identity {
        bool exists = false;
        std::uint64_t dev = 0, ino = 0, size = 0;
        std::int64_t mtime_sec = 0, mtime_nsec = 0;
        bool operator==(const Identity&) const = default;
    } identity_;                                       // under mutex_
    std::shared_ptr<const Table> table_;               // under mutex_
};

// What the resolvers of every loop have found of each name, so that an operator reads of
// a change once (not once per worker): "endpoint addresses changed" (name, old, new,
// source=hosts|dns) and "endpoint name does not resolve" (name, reason) when a name goes
// from resolving (or never asked) to failing; "endpoint name resolves again" after that.
// Thread-safe.
class NameEvents {
public:
    using Fields = std::vector<std::pair<std::string, std::string>>;
    using Sink = std::function<void(bool warn, std::string message, Fields fields)>;
    explicit NameEvents(Sink sink) : sink_(std::move(sink)) {}
    void outcome(const std::string& name, const std::vector<vip::Address>& addresses, const std::string& error,
                 std::string_view source);

private:
    struct Last {
        std::vector<vip::Address> addresses;  // sorted
        std::string source;
        bool known = false;  // resolved at least once
        bool failing = false;
    };
    Sink sink_;
    std::mutex mutex_;
    std::map<std::string, Last> names_;  // under mutex_
};

// What every loop's resolver shares.
struct ResolverShared {
    ResolverShared(std::string hosts_path, NameEvents::Sink sink) : hosts(std::move(hosts_path)), events(std::move(sink)) {}
    HostsFile hosts;
    NameEvents events;
};

class Resolver {
public:
    struct Entry {
        std::vector<vip::Address> addresses;  // A first, then AAAA
        std::string error;                    // the last failure, "" after a success
        std::uint64_t expires = 0;            // uv_now() milliseconds; 0 until first asked
        bool resolved_once = false;
        std::uint32_t failures = 0;           // lookups failed in a row
        bool from_hosts = false;              // the hosts file gave the addresses
    };
    // Called with the entry once a lookup finishes (or at once when the entry is fresh).
    using Callback = std::function<void(const Entry&)>;

    Resolver(uv_loop_t* loop, std::vector<conf::HostPort> servers, std::chrono::milliseconds timeout,
             std::chrono::milliseconds min_ttl, std::chrono::milliseconds max_ttl,
             std::shared_ptr<ResolverShared> shared = nullptr);
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
    // True when the hosts file lists `name`: its entry then holds the file's addresses. A
    // name that was listed and no longer is starts afresh (DNS).
    bool from_hosts(const std::string& name);
    void report(const std::string& name, const Entry& entry);

    std::shared_ptr<ResolverShared> shared_;
    // A name from the hosts file is looked at again this often (the file itself is stat'ed
    // at most once a second, for every loop together).
    static constexpr std::uint64_t hosts_recheck_ms = 1000;

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
