// dns: mesd's DNS answers. The responder here does no I/O: it turns one query's bytes into
// the reply's bytes, or says the query must be forwarded. The daemon's libuv code feeds it.
//
// Glossary
//   zone       a name mesd is authoritative under (config dns.zones, default "mesh.")
//   source     where answers come from: generated hostnames and VIPs (the store)
//   forward    a name outside every zone and every generated hostname goes upstream
//
// Rules (DESIGN.md, RFC 1035, 2308, 4343, 6891, 8482): A/AAAA for generated hostnames with
// AA and the configured TTL, names matched case-insensitively and echoed as asked; a known
// name of another type gets NODATA, an unknown name inside a zone NXDOMAIN, both with the
// zone's SOA; an empty non-terminal (a name with hostnames below it) NODATA (RFC 8020);
// SOA and NS at each apex, the reverse zones of the VIP pools included, whose negative
// answers carry their SOA too (RFC 2308); PTR for every VIP, the whole RRset for ANY; TXT
// describing the MES; ANY at a hostname answered with one RRset. EDNS echoed with our size
// and the query's DO bit (RFC 3225) in every reply to an EDNS query, errors included; TC
// when the answer does not fit; BADVERS for EDNS versions other than 0; FORMERR for a
// second OPT, an OPT outside the additional section, not owned by the root or with an
// option running past its RDATA (RFC 6891 6.1.1); NOTAUTH/BADKEY for any TSIG-signed query
// (mesd holds no key, RFC 8945 5.2.2); AXFR/IXFR NOTIMP over UDP, REFUSED over TCP;
// FORMERR, NOTIMP and REFUSED as RFC 1035 says otherwise.
#pragma once

#include "dns/name_index.hpp"
#include "store/store.hpp"
#include "vip/vip.hpp"

#include "conf/conf.hpp"
#include "workers/worker.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <expected>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dns {

// A generated hostname or VIP and what it belongs to.
struct Owner {
    std::string mesh;
    std::string name;
    std::optional<vip::Address> ipv4;
    std::optional<vip::Address> ipv6;
};

struct Addresses {
    std::optional<vip::Address> ipv4;
    std::optional<vip::Address> ipv6;
};

// What the responder asks about names; implemented over a store snapshot by the daemon.
class Source {
public:
    virtual ~Source() = default;
    // Queries are about to be answered (a UDP batch, a TCP read): a source that follows data
    // published from another thread moves to its newest version here and nowhere else, so
    // that what it hands out (the views of txt_rdata() and vip_hostnames()) stays valid
    // while one query is answered.
    virtual void begin_batch() {}
    // `name` is lowercase, without the trailing dot.
    virtual std::optional<Owner> find_name(std::string_view name) = 0;
    // The addresses of a generated hostname: what an A/AAAA answer needs, without the
    // owner's names (the hot path; by default through find_name).
    virtual std::optional<Addresses> find_addresses(std::string_view name)
    {
        auto owner = find_name(name);
        if (!owner) return std::nullopt;
        return Addresses{owner->ipv4, owner->ipv6};
    }
    // A batch of names about to be looked up: a source may start loading what it will read
    // for them (a hint; nothing is looked up).
    virtual void prefetch(std::span<const std::string_view> names) { (void)names; }
    virtual std::optional<Owner> find_vip(const vip::Address& address) = 0;
    // The hostnames generated for a MES (for PTR).
    virtual std::vector<std::string> hostnames_of(const Owner& owner) = 0;
    // One string per fact about a MES (for TXT): mes=, port=, protocol=, endpoint=, tls=.
    virtual std::vector<std::string> describe(const Owner& owner) = 0;
    // Whether `address` lies in a VIP pool (its reverse name is ours to answer).
    virtual bool in_pool(const vip::Address& address) = 0;
    // The VIP pools: mesd is authoritative for their reverse zones, each pool's prefix
    // rounded down to an octet under in-addr.arpa and to a nibble under ip6.arpa.
    virtual std::vector<vip::Pool> pools() { return {}; }
    // The labels of the reverse zone's apex (as in pools()) for an address of a pool, without
    // allocating: what the fast path needs to name the SOA of an unused address's NXDOMAIN.
    // 0: not known here (the general path answers).
    virtual std::size_t reverse_apex_labels(const vip::Address& address) { (void)address; return 0; }
    // Whether some generated hostname lies below `name` (lowercase, without the final dot):
    // `name` then exists even when it is no hostname itself, an empty non-terminal that
    // gets NODATA and never NXDOMAIN (RFC 8020). Runs for every NXDOMAIN candidate.
    virtual bool has_names_below(std::string_view name) { (void)name; return false; }
    // What the fast path reads instead of asking describe() and hostnames_of(): views into the
    // source's memory, valid until it next changes. `unknown`: the general path must answer.
    enum class Found { unknown, no, yes };
    struct Txt {
        Found found = Found::unknown;  // `no`: no such name
        std::span<const std::uint8_t> rdata;
    };
    // The TXT RDATA of a generated hostname: describe()'s facts as character-strings of at
    // most 255 bytes each (RFC 1035 3.3.14).
    virtual Txt txt_rdata(std::string_view name) { (void)name; return {}; }
    // The hostnames of the MES holding a VIP, as hostnames_of() gives them, written to `out`
    // (`no`: no MES holds it; `unknown` also when there are more than `out` holds).
    struct Hostnames {
        Found found = Found::unknown;
        std::size_t count = 0;
    };
    virtual Hostnames vip_hostnames(const vip::Address& address, std::span<std::string_view> out)
    {
        (void)address;
        (void)out;
        return {};
    }
    // The zones' SOA serial: changes whenever the answers may have.
    virtual std::uint32_t serial() = 0;
};

struct Settings {
    std::vector<std::string> zones = {"mesh."};  // lowercase, with the trailing dot
    std::uint32_t ttl = 30;
    std::uint32_t negative_ttl = 30;
    std::uint16_t edns_udp_size = 1232;
    // Answer A/AAAA hits, NODATA and NXDOMAIN with a small hand-written encoder instead of
    // building an ldns packet (the general path stays for everything else; tests compare
    // the two).
    bool fast_path = true;
};

// Where a query came from, as far as the answer depends on it.
struct Client {
    bool tcp = false;
    bool may_forward = false;  // forwarding enabled and the client in the allow list
};

enum class Action {
    reply,    // send `wire`
    forward,  // send the query upstream; the forwarder answers
    drop,     // send nothing (not a query, or not even a header)
};

struct Response {
    Action action = Action::drop;
    std::vector<std::uint8_t> wire;
    // For metrics: the question's type (0 when unreadable) and the reply's rcode.
    std::uint16_t qtype = 0;
    std::uint16_t rcode = 0;
    std::uint8_t opcode = 0;  // the query's (drop: none)
    bool fast = false;        // written by the fast path
    bool truncated = false;
    // For forwarding: the client's UDP size limit (512 without EDNS) and the question class.
    std::uint16_t client_udp_size = 512;
    std::uint16_t qclass = 0;
};

// A fast-path reply, written in place: answering allocates nothing. A reply larger than
// this (a TXT or PTR answer over TCP) is left to the general path.
struct FastReply {
    std::array<std::uint8_t, 4096> wire;
    std::uint16_t size = 0;
    std::uint16_t qtype = 0;
    std::uint16_t rcode = 0;  // NOERROR or NXDOMAIN
};

class Responder {
public:
    explicit Responder(Settings settings);
    // A copy takes the TTLs of the moment.
    Responder(const Responder& o) : settings_(o.settings_), ttl_(o.ttl()), negative_ttl_(o.negative_ttl()) {}
    Responder& operator=(const Responder& o)
    {
        settings_ = o.settings_;
        set_ttls(o.ttl(), o.negative_ttl());
        return *this;
    }

    // The fast path when it can answer, else the general one.
    Response respond(std::span<const std::uint8_t> query, const Client& client, Source& source) const;
    // A/AAAA/TXT hits, NODATA and NXDOMAIN under a zone, and PTR of the pools' addresses, by a
    // small hand-written encoder (TXT and PTR from what the source keeps for it); false when
    // the general path must answer (anything else, or a reply that needs truncating).
    bool answer_fast(std::span<const std::uint8_t> query, const Client& client, Source& source, FastReply& reply) const;
    // The question names of a batch of queries handed to `source` as a prefetch hint, so that
    // the lookups of the batch overlap their memory loads instead of waiting for each in turn.
    void prefetch(std::span<const std::span<const std::uint8_t>> queries, Source& source) const;
    // Every query, through ldns.
    Response answer_general(std::span<const std::uint8_t> query, const Client& client, Source& source) const;

    // A reply with `rcode` and the question of `query` (SERVFAIL when forwarding fails).
    std::vector<std::uint8_t> error_reply(std::span<const std::uint8_t> query, std::uint16_t rcode,
                                          std::uint16_t udp_size) const;

    // settings() as made; the TTLs in force are ttl() and negative_ttl().
    const Settings& settings() const { return settings_; }

    // Any thread (SIGHUP reloads them while the workers answer): the TTLs of answers written
    // from now on. Each is read once per record written, so one answer may mix an old and a
    // new TTL across its records while they change.
    void set_ttls(std::uint32_t ttl, std::uint32_t negative_ttl);
    std::uint32_t ttl() const { return ttl_.load(std::memory_order_relaxed); }
    std::uint32_t negative_ttl() const { return negative_ttl_.load(std::memory_order_relaxed); }

private:
    struct FastQuestion;
    bool answer_fast_txt(const FastQuestion& q, std::span<const std::uint8_t> rdata, FastReply& reply) const;
    bool answer_fast_ptr(const FastQuestion& q, Source& source, FastReply& reply) const;
    std::size_t write_fast_header(const FastQuestion& q, std::uint16_t rcode, std::uint16_t answers, FastReply& reply,
                                  std::uint16_t authority = 0) const;
    // A negative answer's SOA at `out` for the apex the pointer `apex` (0xc000 | offset) names.
    std::size_t write_fast_soa(std::uint8_t* out, std::uint16_t apex, std::uint32_t serial) const;
    bool finish_fast(const FastQuestion& q, std::size_t size, std::uint16_t rcode, std::uint16_t qtype, FastReply& reply) const;

    Settings settings_;
    std::atomic<std::uint32_t> ttl_;
    std::atomic<std::uint32_t> negative_ttl_;
};

// ---- One loop or N workers: what is per worker and what is shared ---------------------------
//
// With `workers: 1` the control loop runs one Server over its StoreSource. With N workers each
// worker's loop runs a Server of its own over a CatalogSource of its own, all bound to the
// same addresses (ServerOptions::reuse_port), and the control loop keeps the StoreSource.
//
// Shared by every thread, never changed once made:
//   Catalog        a NameIndex and the VIP pools at one store generation (no store snapshot)
//   Responder      the answering rules (settings only; its TTLs are atomics, set_ttls())
// Shared, thread-safe:
//   SharedCatalog  the newest Catalog, published by the control loop, read by the workers
//   SharedLimits   the rate limiter's buckets and the TCP client counts of every server, and
//                  (SharedLimits::Common, dns/server.cpp) the forwarder's state: one record
//                  per upstream (RTT, failures, back-off, probe), the upstream list,
//                  maxInFlight's count, the loop token and the questions being asked
//                  upstream; and each server's inbox, for what one hands another (a
//                  forwarded answer, an idle TCP client's place)
// One per loop, used on that loop's thread only:
//   StoreSource    the control loop's: refreshes from the store, builds each new Catalog and
//                  publishes it; with one loop it is also what the server answers from
//   CatalogSource  a worker's: answers from the newest published Catalog, with its own TXT
//                  cache and its own short store reads
//   Server         a worker's listeners, TCP clients and forwards; its Metrics are written
//                  there and read from any thread (summed with Metrics::operator+=)

// A NameIndex and the pools it was built with, at one store generation. Immutable: any
// number of threads read it at once; it is freed when the last holder lets it go.
struct Catalog {
    NameIndex index;
    std::optional<vip::Pool> pool4;
    std::optional<vip::Pool> pool6;
    std::uint64_t generation = 0;
};

// The newest Catalog, handed from the thread that builds it to the threads that answer. A
// reader compares version() with the one it holds, one atomic load and no lock, and takes
// the lock only when it moved: once per publication, not per query.
class SharedCatalog {
public:
    // Any thread (the control loop's): makes `catalog` the current one.
    void publish(std::shared_ptr<const Catalog> catalog);
    // Any thread: how many times a catalog was published (0: never).
    std::uint64_t version() const { return version_.load(std::memory_order_acquire); }
    // Any thread: the current catalog (null before the first) and its version, read together.
    std::pair<std::shared_ptr<const Catalog>, std::uint64_t> current() const;

private:
    std::atomic<std::uint64_t> version_{0};
    mutable std::mutex mutex_;
    std::shared_ptr<const Catalog> catalog_;  // under mutex_
};

namespace detail {

// Answers from one Catalog: what StoreSource and CatalogSource share. The TXT RDATA of each
// MES is built on its first TXT question (one store read) and kept until the catalog changes:
// the cost of a TXT answer is paid once per MES, not per query. Not thread-safe: one per loop.
class CatalogAnswers : public Source {
public:
    std::optional<Owner> find_name(std::string_view name) override;
    std::optional<Addresses> find_addresses(std::string_view name) override;
    void prefetch(std::span<const std::string_view> names) override;
    std::optional<Owner> find_vip(const vip::Address& address) override;
    std::vector<std::string> hostnames_of(const Owner& owner) override;
    std::vector<std::string> describe(const Owner& owner) override;
    bool in_pool(const vip::Address& address) override;
    std::vector<vip::Pool> pools() override;
    std::size_t reverse_apex_labels(const vip::Address& address) override;
    bool has_names_below(std::string_view name) override;
    Txt txt_rdata(std::string_view name) override;
    Hostnames vip_hostnames(const vip::Address& address, std::span<std::string_view> out) override;
    std::uint32_t serial() override { return catalog_ ? static_cast<std::uint32_t>(catalog_->generation) : 0; }

protected:
    // The snapshot to read a MES from, opened into `scratch` or one the source keeps; null
    // when there is none. `same_generation`: only one at the catalog's generation will do
    // (what the TXT cache keeps must agree with the index it is kept for).
    virtual const store::Snapshot* reader(std::optional<store::Snapshot>& scratch, bool same_generation) = 0;
    // Answers from `catalog` from now on; the TXT cache starts empty.
    void use(std::shared_ptr<const Catalog> catalog);
    const Catalog* catalog() const { return catalog_.get(); }

private:
    std::shared_ptr<const Catalog> catalog_;
    // TXT RDATA by owner position: 1 + its offset in txt_bytes_ (a 16-bit size, then the
    // bytes), 0 while not built, too_large when it cannot be one record.
    static constexpr std::uint32_t too_large = 0xffffffff;
    std::vector<std::uint32_t> txt_at_;
    std::vector<std::uint8_t> txt_bytes_;
};

}  // namespace detail

// The control loop's Source: a store snapshot, renewed by `refresh()`, and a Catalog built
// from it whenever the store's generation moves, published to shared() for the workers'
// CatalogSources. Names, VIPs and their hostnames come from the catalog's index; describe()
// reads the snapshot. Used on the control loop's thread only.
class StoreSource final : public detail::CatalogAnswers {
public:
    // Serves the generated hostnames of `meshes`, the first listed winning a name that
    // several of them generate.
    StoreSource(const store::Store& store, std::vector<std::string> meshes);

    // Takes a fresh snapshot; true when the store's generation moved since the last one (a
    // new Catalog was built and published to shared()).
    store::Result<bool> refresh();
    // Lets go of the snapshot (a write in this process may need to grow the map).
    void release() { snapshot_.reset(); }
    std::uint64_t generation() const { return generation_; }
    const store::Snapshot* snapshot() const { return snapshot_ ? &*snapshot_ : nullptr; }
    const NameIndex* index() const { return catalog() ? &catalog()->index : nullptr; }
    // Where each refresh that moved publishes its catalog: what the workers' CatalogSources
    // are made with. Lives as long as this.
    SharedCatalog& shared() { return shared_; }

    std::uint32_t serial() override { return static_cast<std::uint32_t>(generation_); }

protected:
    const store::Snapshot* reader(std::optional<store::Snapshot>& scratch, bool same_generation) override;

private:
    const store::Store& store_;
    std::vector<std::string> meshes_;
    std::optional<store::Snapshot> snapshot_;
    std::uint64_t generation_ = 0;
    SharedCatalog shared_;
};

// A worker's Source: answers from the newest Catalog of a SharedCatalog, taken up at each
// begin_batch() (the A/AAAA/PTR/NXDOMAIN/NODATA path reads only the catalog and takes no
// lock), with a TXT cache of its own rebuilt for each catalog. What the catalog does not
// hold (TXT RDATA not yet cached, describe()) is read through a store snapshot opened for the
// read and closed right after; when none can be had, those answers are left to the general
// path, as StoreSource's are without a snapshot. Used on its worker's thread only; `store`
// and `shared` outlive it.
class CatalogSource final : public detail::CatalogAnswers {
public:
    CatalogSource(const store::Store& store, SharedCatalog& shared);

    // Takes up the newest published catalog, if it moved. The daemon may post this to an
    // idle worker after a publication, so that the old catalog is freed without waiting
    // for the worker's next query.
    void begin_batch() override;
    // The catalog's version taken up (SharedCatalog::version()); 0 before the first.
    std::uint64_t version() const { return version_; }

protected:
    const store::Snapshot* reader(std::optional<store::Snapshot>& scratch, bool same_generation) override;

private:
    const store::Store& store_;
    SharedCatalog& shared_;
    std::uint64_t version_ = 0;
};

// Counters keyed by a 16-bit code (query type, rcode, opcode): one counter for each code in
// a fixed list of known ones and one shared by every other code, so that however many codes
// clients send, the counters and the metrics page keep this size. `counts[code]` counts.
// Each counter is a workers::Counter: one thread (the server's loop) writes, any reads.
class CodeCounts {
public:
    struct Known {
        std::uint16_t code;
        const char* name;  // the metric label
    };
    // `known` sorted by code; it must outlive this.
    explicit CodeCounts(std::span<const Known> known) : known_(known), counts_(known.size() + 1, workers::Counter{0}) {}
    workers::Counter& operator[](std::uint16_t code);
    std::uint64_t other() const { return counts_.back().load(); }
    // The label a code is counted under: its name, or "other".
    std::string_view label(std::uint16_t code) const;
    // Adds `o`'s counts, which must be kept over the same list of codes (a total of the
    // workers' counts, made by the thread that reads them).
    CodeCounts& operator+=(const CodeCounts& o);
    // Each label with its count, the known codes in order and then "other"; counts of zero left out.
    template <class Fn>
    void each(Fn&& fn) const
    {
        for (std::size_t i = 0; i < counts_.size(); ++i)
            if (std::uint64_t n = counts_[i].load())
                fn(std::string_view(i < known_.size() ? known_[i].name : "other"), n);
    }

private:
    std::span<const Known> known_;
    std::vector<workers::Counter> counts_;
};

// The codes labelled by name in the metrics (dns/server.cpp lists them): the query types
// mesd answers or that resolvers commonly ask, the rcodes of RFC 1035, 2136, 6891, 8945,
// 7873 and 8490, and the opcodes IANA assigns.
extern const std::span<const CodeCounts::Known> known_qtypes, known_rcodes, known_opcodes;

// A sum of seconds that one thread adds to and any thread reads: whole nanoseconds in a
// workers::Counter (a double written on one thread cannot be read on another without a data
// race; 2^64 ns is 584 years of summed latency).
class SecondsSum {
public:
    void add(double seconds, std::uint64_t times = 1)
    {
        if (seconds > 0) nanos_ += static_cast<std::uint64_t>(std::llround(seconds * 1e9)) * times;
    }
    double seconds() const { return static_cast<double>(nanos_.load()) / 1e9; }
    std::uint64_t nanoseconds() const { return nanos_.load(); }
    SecondsSum& operator+=(const SecondsSum& o)
    {
        nanos_ += o.nanos_.load();
        return *this;
    }

private:
    workers::Counter nanos_;
};

// Counters the admin endpoint publishes. Only the server's loop thread writes them; any
// thread may read them (each a workers::Counter), and the daemon adds its workers' into one
// total with +=.
struct Metrics {
    using Counter = workers::Counter;
    CodeCounts queries_by_qtype{known_qtypes};
    CodeCounts replies_by_rcode{known_rcodes};
    CodeCounts queries_by_opcode{known_opcodes};  // every query with a header, QR clear
    Counter answered;              // replied from mesd's own data (or its errors)
    Counter answered_fast;         // of those, written by the fast path
    Counter forwarded;             // sent upstream
    Counter dropped;               // not a query, or not even a header
    Counter truncated;             // replies sent with TC
    Counter rate_limited_dropped;  // UDP answers not sent: over dns.rateLimit
    Counter rate_limited_slipped;  // UDP answers sent as TC instead: over dns.rateLimit
    Counter upstream_timeouts;     // an upstream did not answer in time
    Counter upstream_failures;     // every upstream failed: SERVFAIL
    Counter upstream_mismatched;   // answers ignored: wrong ID, source or question
    Counter upstream_tcp_retries;
    Counter forward_overload;      // refused because maxInFlight were outstanding
    Counter forward_loops;         // queries mesd forwarded that came back to it: SERVFAIL
    Counter forward_joined;        // waited for the answer to the same question already asked
    Counter upstream_probes;       // queries sent to a backed-off upstream to see if it is back
    Counter forward_backed_off;    // SERVFAIL at once: every upstream backed off
    Counter tcp_connections;
    Counter tcp_refused;           // over tcpMaxClients, nothing to evict
    Counter tcp_io_timeouts;       // a message or reply not through within tcpIoTimeout
    Counter tcp_refused_per_ip;    // over tcpMaxClientsPerIp
    Counter tcp_evicted;           // closed to make room for a newcomer
    Counter tcp_accept_errors;     // accept failed for want of descriptors (EMFILE, ENFILE)
    // Latency from receipt to reply, in these upper bounds (seconds), plus the rest.
    static constexpr std::array<double, 12> bounds = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                      0.01,   0.025,   0.05,   0.1,   0.5,    2.0};
    std::array<Counter, bounds.size() + 1> latency_buckets{};
    SecondsSum latency_sum;  // .seconds()
    Counter latency_count;
    // `replies` that took `seconds` each.
    void observe(double seconds, std::uint64_t replies = 1);
    // Adds every counter of `o` (a worker's metrics, read on the thread making the total).
    Metrics& operator+=(const Metrics& o);
};

// Response rate limiting of UDP answers per source prefix (dns/rate_limit.hpp).
struct RateLimitSettings {
    std::uint32_t responses_per_second = 0;  // per prefix; 0: no limit
    std::uint32_t burst = 0;                 // answers at once after a quiet spell; 0: one second's
    std::uint32_t slip = 1;                  // every Nth limited answer goes out as TC; 0: none
    unsigned ipv4_prefix = 24;
    unsigned ipv6_prefix = 56;
    std::uint32_t table_size = 393241;       // buckets, fixed; prefixes that collide share one
    std::vector<std::string> exempt = {"127.0.0.0/8", "::1/128"};  // CIDRs never limited
};

class SharedLimits;
class RateLimiter;

struct ServerOptions {
    std::vector<conf::HostPort> listen;
    // SO_REUSEPORT on every listening socket, UDP and TCP: several servers (one per worker)
    // bind the same addresses and the kernel spreads datagrams and connections over them by
    // the 4-tuple's hash. The first server may listen on port 0; the others are then given
    // its bound() addresses (same address and family, so the same socket options follow).
    bool reuse_port = false;
    // What holds across every server that shares it: the rate limiter's buckets, the TCP
    // client counts (tcpMaxClients, tcpMaxClientsPerIp) and the forwarder (maxInFlight, the
    // upstreams and what they have shown), whose limits are those it was made with or last
    // given by SharedLimits::set_limits (this struct's rate_limit, tcp_max_clients* and
    // max_in_flight are then not read by the server). Null: the
    // server makes its own from these options (one loop: each limit is the server's).
    std::chrono::milliseconds tcp_idle_timeout{10000};
    std::uint32_t tcp_max_clients = 1024;
    // A message's rest once its first byte is in, and a reply's time unsent.
    std::chrono::milliseconds tcp_io_timeout{500};
    std::uint32_t tcp_max_clients_per_ip = 0;  // 0: no cap
    bool forward_enabled = true;
    std::vector<conf::HostPort> upstreams;
    std::chrono::milliseconds forward_timeout{2000};
    // The longest a client waits for a forwarded answer, every upstream tried included; each
    // attempt gets at most `forward_timeout` and its share of what is left.
    std::chrono::milliseconds forward_max_wait{1800};
    // When `upstreams` is empty: the nameservers of this file (port 53), read again when it
    // changes. Upstreams that are one of mesd's own listening addresses are left out, checked
    // again every `recheck_interval` (the file and the interface addresses may change).
    std::string resolv_conf;
    std::chrono::milliseconds recheck_interval{2000};
    // Called for what an operator must hear about: an upstream left out, no upstream at all, a
    // forwarding loop. One key and value each; absent: nothing is reported.
    std::function<void(std::string_view message, std::string_view key, const std::string& value)> on_warn;
    std::vector<std::string> allow;  // CIDRs
    std::uint32_t max_in_flight = 4096;
    RateLimitSettings rate_limit;
    std::shared_ptr<SharedLimits> shared;
};

// The limits that must hold across the servers of every worker, and so live outside any of
// them: one rate limiter (its buckets updated by compare-and-swap, dns/rate_limit.hpp), the
// count of TCP clients open (atomic) and the counts per client address (under a mutex: taken
// on accept and close only), and the forwarder's state, so that N servers forward as one:
// a timeout seen by one backs the upstream off for all, one probe at a time, maxInFlight
// counted across all, the upstream list read (and its warnings given) once, a query any of
// them forwarded known as a loop by all, and a question asked upstream once whichever server
// it reaches. Thread-safe; made once (the control thread) and handed to each server through
// ServerOptions::shared before the servers start.
class SharedLimits {
public:
    // The limits of `options`: rate_limit (none when responses_per_second is 0),
    // tcp_max_clients and tcp_max_clients_per_ip (0: no cap), max_in_flight.
    explicit SharedLimits(const ServerOptions& options);
    ~SharedLimits();
    SharedLimits(const SharedLimits&) = delete;
    SharedLimits& operator=(const SharedLimits&) = delete;

    // Null when no rate is set. RateLimiter::check() is safe on any thread. Any thread: a
    // server keeps the one it took until it is reconfigured.
    std::shared_ptr<RateLimiter> limiter() const;

    // Any thread (a reload): the limits of `options` from now on, as the constructor takes
    // them. Clients and forwards over a lowered limit go on; newcomers wait for room. A
    // changed rate limit starts a new table (its buckets empty), which each server takes up
    // at its next reconfigure().
    void set_limits(const ServerOptions& options);

    // One more TCP client, if fewer than tcp_max_clients are open across the servers; a
    // caller that gets false may close one of its own and take over its place instead.
    bool take_tcp_client() noexcept;
    void release_tcp_client() noexcept;
    std::uint32_t tcp_clients() const noexcept { return tcp_clients_.load(std::memory_order_relaxed); }
    std::uint32_t tcp_max_clients() const { return tcp_max_clients_.load(std::memory_order_relaxed); }

    // One more connection from `address` (its 4 or 16 bytes), if it has fewer than
    // tcp_max_clients_per_ip; always true when there is no cap (nothing is counted then).
    bool take_address(std::string_view address);
    void release_address(std::string_view address);
    std::uint32_t tcp_max_clients_per_ip() const { return tcp_max_clients_per_ip_.load(std::memory_order_relaxed); }

    // What the servers hold in common besides these limits (defined in dns/server.cpp; only
    // servers use it): the forwarder's state, and each server's inbox, through which one
    // server hands another a forwarded answer or asks it to close its oldest idle TCP
    // client for a newcomer. Under mutexes taken when a query is forwarded, an upstream
    // answers or times out, the upstream list is read or replaced, or a TCP client arrives
    // at tcpMaxClients: never on the path that answers from mesd's own data.
    struct Common;
    Common& common() const { return *common_; }

private:
    mutable std::mutex limiter_mutex_;
    std::shared_ptr<RateLimiter> limiter_;  // under limiter_mutex_
    RateLimitSettings rate_limit_;          // under limiter_mutex_
    std::unique_ptr<Common> common_;
    std::atomic<std::uint32_t> tcp_max_clients_;
    std::atomic<std::uint32_t> tcp_max_clients_per_ip_;
    std::atomic<std::uint32_t> tcp_clients_{0};
    std::mutex per_address_mutex_;
    std::map<std::string, std::uint32_t, std::less<>> per_address_;  // under per_address_mutex_
};

// What the forwarder knows about one upstream (RFC 6298's smoothed RTT and its variation,
// from UDP answers), for the metrics.
struct UpstreamStatus {
    std::string address;            // "10.0.0.2:53"
    bool measured = false;          // srtt and rttvar hold at least one sample
    double srtt_seconds = 0;
    double rttvar_seconds = 0;
    std::uint32_t failures = 0;     // timeouts in a row (reset by any answer)
    bool backed_off = false;        // tried after every healthy upstream until it answers again
    std::uint64_t answers = 0;
    std::uint64_t timeouts = 0;
};

// UDP and TCP listeners on a libuv loop, answering through a Responder and forwarding the
// rest. Lives on the loop's thread; stop() must run before the loop is closed.
//
// Threads. The constructor and start() run before the loop does (on the thread that made
// the loop, the control thread for a worker's: workers::Worker lets handles be set up before
// its thread starts); stop() runs on the loop's thread (posted there for a worker); bound()
// after start() on any thread; metrics(), in_flight() and upstreams() on any thread, while
// the loop runs. `responder` and `source` outlive the server; a Responder is immutable and
// may serve several servers, a Source serves one loop. on_warn is called on the loop's thread
// (for the upstream list's warnings, that of the first server sharing `shared` to start: it
// alone reads the list and checks it again).
class Server {
public:
    Server(void* uv_loop, const Responder& responder, Source& source, ServerOptions options);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Binds every listen address; the error names the address that failed.
    std::expected<void, std::string> start();
    // Closes the listeners, lets in-flight forwards and TCP replies finish, then calls `done`.
    void stop(std::function<void()> done);
    // The addresses actually bound ("127.0.0.1:53"), useful when a port was 0.
    std::vector<std::string> bound() const;
    // Any thread: the counters (each read at some moment while the loop runs).
    const Metrics& metrics() const;
    // Any thread: this server's forwards outstanding (the servers sharing a SharedLimits sum
    // to the count maxInFlight is held to).
    std::size_t in_flight() const;
    // Any thread: the upstreams forwarded to now, best first. Servers sharing a SharedLimits
    // share these records: each reports the same list, not a part of it.
    std::vector<UpstreamStatus> upstreams() const;

    // The loop's thread (a reload): takes from `options` the upstreams (the server that
    // keeps the shared list reads it again now; an upstream still listed keeps what was
    // learnt of it), the allow list, forward_timeout, forward_max_wait, tcp_idle_timeout and
    // tcp_io_timeout, and the rate limiter its SharedLimits holds now. With limits of its own
    // (no ServerOptions::shared) it sets those too (SharedLimits::set_limits); shared ones
    // are set once, by whoever shares them, before the servers are reconfigured. Forwards
    // and TCP clients under way keep the deadlines they were given; the rest is read at
    // each use.
    void reconfigure(const ServerOptions& options);

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

// The nameservers of `resolv_conf` (port 53), leaving out mesd's own `listen` addresses so
// that a host pointing its resolver at mesd does not make mesd ask itself.
std::vector<conf::HostPort> system_upstreams(const std::vector<conf::HostPort>& listen,
                                             const std::string& resolv_conf = "/etc/resolv.conf");
// Every `nameserver` of `resolv_conf`, port 53, in order.
std::vector<conf::HostPort> read_nameservers(const std::string& resolv_conf);

// Name of a query type for metrics and logs ("A", "AAAA", ..., "TYPE65").
std::string qtype_name(std::uint16_t qtype);
std::string rcode_name(std::uint16_t rcode);

}  // namespace dns
