// The DNS server's I/O on libuv: UDP and TCP listeners (RFC 7766 framing, pipelining, idle
// timeout, a deadline per message and per reply, client limits kept by evicting the idle and
// the slow) and the forwarder (fresh ID and source port per query, answers
// matched on ID, source and question, a timeout per upstream, TCP on TC, SERVFAIL when
// every upstream fails). Every handle is owned by one object that frees itself in the last
// close callback; no callback lets an exception out.
#include "dns/dns.hpp"
#include "dns/rate_limit.hpp"
#include "proxy/accept.hpp"

#include <uv.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <set>
#include <tuple>
#include <unordered_map>

namespace dns {

namespace {

// Sorted by code. Query types: what mesd answers itself (A, NS, SOA, PTR, TXT, AAAA, ANY) and
// what stub resolvers, browsers, mail servers and validators ask often enough to be worth a
// series of their own; the other 65,500 or so count as "other".
constexpr std::array<CodeCounts::Known, 29> qtype_table{{
    {1, "A"},        {2, "NS"},       {5, "CNAME"},    {6, "SOA"},   {12, "PTR"},   {13, "HINFO"},
    {15, "MX"},      {16, "TXT"},     {28, "AAAA"},    {33, "SRV"},  {35, "NAPTR"}, {39, "DNAME"},
    {43, "DS"},      {46, "RRSIG"},   {47, "NSEC"},    {48, "DNSKEY"}, {50, "NSEC3"}, {51, "NSEC3PARAM"},
    {52, "TLSA"},    {59, "CDS"},     {60, "CDNSKEY"}, {64, "SVCB"}, {65, "HTTPS"}, {99, "SPF"},
    {251, "IXFR"},   {252, "AXFR"},   {255, "ANY"},    {256, "URI"}, {257, "CAA"},
}};
// RFC 1035 4.1.1, RFC 2136 2.2 (YXDOMAIN to NOTZONE), RFC 8490 (DSOTYPENI), RFC 6891 (BADVERS),
// RFC 8945 and 2930 (BADKEY to BADTRUNC), RFC 7873 (BADCOOKIE).
constexpr std::array<CodeCounts::Known, 19> rcode_table{{
    {0, "NOERROR"},   {1, "FORMERR"},  {2, "SERVFAIL"}, {3, "NXDOMAIN"}, {4, "NOTIMP"},   {5, "REFUSED"},
    {6, "YXDOMAIN"},  {7, "YXRRSET"},  {8, "NXRRSET"},  {9, "NOTAUTH"},  {10, "NOTZONE"}, {11, "DSOTYPENI"},
    {16, "BADVERS"},  {17, "BADKEY"},  {18, "BADTIME"}, {19, "BADMODE"}, {20, "BADNAME"}, {21, "BADALG"},
    {22, "BADTRUNC"},
}};
constexpr std::array<CodeCounts::Known, 6> opcode_table{{
    {0, "QUERY"}, {1, "IQUERY"}, {2, "STATUS"}, {4, "NOTIFY"}, {5, "UPDATE"}, {6, "DSO"},
}};

constexpr bool sorted(std::span<const CodeCounts::Known> table)
{
    for (std::size_t i = 1; i < table.size(); ++i)
        if (table[i - 1].code >= table[i].code) return false;
    return true;
}
static_assert(sorted(qtype_table) && sorted(rcode_table) && sorted(opcode_table));

}  // namespace

const std::span<const CodeCounts::Known> known_qtypes = qtype_table;
const std::span<const CodeCounts::Known> known_rcodes = rcode_table;
const std::span<const CodeCounts::Known> known_opcodes = opcode_table;

workers::Counter& CodeCounts::operator[](std::uint16_t code)
{
    auto it = std::ranges::lower_bound(known_, code, {}, &Known::code);
    if (it != known_.end() && it->code == code) return counts_[static_cast<std::size_t>(it - known_.begin())];
    return counts_.back();
}

std::string_view CodeCounts::label(std::uint16_t code) const
{
    auto it = std::ranges::lower_bound(known_, code, {}, &Known::code);
    return it != known_.end() && it->code == code ? std::string_view(it->name) : std::string_view("other");
}

CodeCounts& CodeCounts::operator+=(const CodeCounts& o)
{
    // Both kept over the same list (one of known_qtypes, known_rcodes, known_opcodes).
    for (std::size_t i = 0; i < counts_.size() && i < o.counts_.size(); ++i) counts_[i] += o.counts_[i].load();
    return *this;
}

void Metrics::observe(double seconds, std::uint64_t replies)
{
    std::size_t i = 0;
    while (i < bounds.size() && seconds > bounds[i]) ++i;
    latency_buckets[i] += replies;
    latency_sum.add(seconds, replies);
    latency_count += replies;
}

Metrics& Metrics::operator+=(const Metrics& o)
{
    queries_by_qtype += o.queries_by_qtype;
    replies_by_rcode += o.replies_by_rcode;
    queries_by_opcode += o.queries_by_opcode;
    for (auto [mine, theirs] : {
             std::pair{&answered, &o.answered},
             {&answered_fast, &o.answered_fast},
             {&forwarded, &o.forwarded},
             {&dropped, &o.dropped},
             {&truncated, &o.truncated},
             {&rate_limited_dropped, &o.rate_limited_dropped},
             {&rate_limited_slipped, &o.rate_limited_slipped},
             {&upstream_timeouts, &o.upstream_timeouts},
             {&upstream_failures, &o.upstream_failures},
             {&upstream_mismatched, &o.upstream_mismatched},
             {&upstream_tcp_retries, &o.upstream_tcp_retries},
             {&forward_overload, &o.forward_overload},
             {&forward_loops, &o.forward_loops},
             {&forward_joined, &o.forward_joined},
             {&upstream_probes, &o.upstream_probes},
             {&forward_backed_off, &o.forward_backed_off},
             {&tcp_connections, &o.tcp_connections},
             {&tcp_refused, &o.tcp_refused},
             {&tcp_io_timeouts, &o.tcp_io_timeouts},
             {&tcp_refused_per_ip, &o.tcp_refused_per_ip},
             {&tcp_evicted, &o.tcp_evicted},
             {&tcp_accept_errors, &o.tcp_accept_errors},
         })
        *mine += theirs->load();
    for (std::size_t i = 0; i < latency_buckets.size(); ++i) latency_buckets[i] += o.latency_buckets[i].load();
    latency_sum += o.latency_sum;
    latency_count += o.latency_count.load();
    return *this;
}

bool SharedLimits::take_tcp_client() noexcept
{
    // A compare-and-swap, not an add then a check: the count never passes the limit, even
    // for a moment, so no other worker refuses a client because of one about to be refused.
    std::uint32_t open = tcp_clients_.load(std::memory_order_relaxed);
    do {
        if (open >= tcp_max_clients_.load(std::memory_order_relaxed)) return false;
    } while (!tcp_clients_.compare_exchange_weak(open, open + 1, std::memory_order_relaxed));
    return true;
}

void SharedLimits::release_tcp_client() noexcept { tcp_clients_.fetch_sub(1, std::memory_order_relaxed); }

bool SharedLimits::take_address(std::string_view address)
{
    auto cap = tcp_max_clients_per_ip_.load(std::memory_order_relaxed);
    if (cap == 0) return true;
    std::lock_guard lock(per_address_mutex_);
    auto it = per_address_.find(address);
    if (it == per_address_.end()) {
        per_address_.emplace(std::string(address), 1);
        return true;
    }
    if (it->second >= cap) return false;
    ++it->second;
    return true;
}

void SharedLimits::release_address(std::string_view address)
{
    // By what was counted, not by the cap: a reload may have changed it since (`address` is
    // empty for a client that was not counted).
    if (address.empty()) return;
    std::lock_guard lock(per_address_mutex_);
    auto it = per_address_.find(address);
    if (it != per_address_.end() && --it->second == 0) per_address_.erase(it);
}

namespace {

constexpr std::size_t max_udp = 65535;

using Clock = std::chrono::steady_clock;

std::string from_uv(int rc) { return uv_strerror(rc); }

std::optional<sockaddr_storage> to_sockaddr(const conf::HostPort& hp, bool any_v6 = false)
{
    sockaddr_storage ss{};
    std::string host = hp.host.empty() ? (any_v6 ? "::" : "0.0.0.0") : hp.host;
    if (host.find(':') != std::string::npos) {
        if (uv_ip6_addr(host.c_str(), hp.port, reinterpret_cast<sockaddr_in6*>(&ss)) != 0) return std::nullopt;
    } else if (uv_ip4_addr(host.c_str(), hp.port, reinterpret_cast<sockaddr_in*>(&ss)) != 0) {
        return std::nullopt;
    }
    return ss;
}

std::optional<vip::Address> address_of(const sockaddr* sa)
{
    if (sa->sa_family == AF_INET) {
        auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        return vip::Address::from_bytes(std::string_view(reinterpret_cast<const char*>(&in->sin_addr), 4));
    }
    if (sa->sa_family == AF_INET6) {
        auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        const char* bytes = reinterpret_cast<const char*>(&in6->sin6_addr);
        // An IPv4 client of a dual-stack socket arrives as ::ffff:a.b.c.d (RFC 4291 section
        // 2.5.5.2): it is that IPv4 address, which the allow list and mesd's own addresses name.
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) return vip::Address::from_bytes(std::string_view(bytes + 12, 4));
        return vip::Address::from_bytes(std::string_view(bytes, 16));
    }
    return std::nullopt;
}

std::string describe(const sockaddr* sa)
{
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        uv_ip4_name(in, host, sizeof host);
        port = ntohs(in->sin_port);
        return std::string(host) + ":" + std::to_string(port);
    }
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    uv_ip6_name(in6, host, sizeof host);
    port = ntohs(in6->sin6_port);
    return "[" + std::string(host) + "]:" + std::to_string(port);
}

bool same_endpoint(const sockaddr* a, const sockaddr* b)
{
    if (a->sa_family != b->sa_family) return false;
    if (a->sa_family == AF_INET) {
        auto* x = reinterpret_cast<const sockaddr_in*>(a);
        auto* y = reinterpret_cast<const sockaddr_in*>(b);
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    auto* x = reinterpret_cast<const sockaddr_in6*>(a);
    auto* y = reinterpret_cast<const sockaddr_in6*>(b);
    return x->sin6_port == y->sin6_port && std::memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

// Offset just past the first question, or 0 when it cannot be read (bounds-checked).
std::size_t question_end(std::span<const std::uint8_t> msg)
{
    std::size_t pos = 12;
    while (true) {
        if (pos >= msg.size()) return 0;
        std::uint8_t len = msg[pos];
        if (len == 0) break;
        if (len & 0xc0) return 0;  // a query's question is never compressed
        if (len >= msg.size() - pos) return 0;
        pos += 1u + len;
    }
    pos += 1;
    if (4 > msg.size() - pos) return 0;
    return pos + 4;
}

// The question sections match, names compared case-insensitively (RFC 4343; resolvers
// may randomise case, RFC 5452 section 9.1 / "0x20").
bool same_question(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b)
{
    std::size_t ea = question_end(a), eb = question_end(b);
    if (ea == 0 || ea != eb) return false;
    if (a[4] != b[4] || a[5] != b[5]) return false;  // QDCOUNT
    for (std::size_t i = 12; i < ea - 4; ++i) {  // the name, case-insensitively
        auto x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = static_cast<std::uint8_t>(x + 32);
        if (y >= 'A' && y <= 'Z') y = static_cast<std::uint8_t>(y + 32);
        if (x != y) return false;
    }
    return std::equal(a.begin() + static_cast<std::ptrdiff_t>(ea - 4), a.begin() + static_cast<std::ptrdiff_t>(ea),
                      b.begin() + static_cast<std::ptrdiff_t>(ea - 4));  // type and class exactly
}

std::uint16_t get_id(std::span<const std::uint8_t> m) { return static_cast<std::uint16_t>((m[0] << 8) | m[1]); }
void set_id(std::vector<std::uint8_t>& m, std::uint16_t id)
{
    m[0] = static_cast<std::uint8_t>(id >> 8);
    m[1] = static_cast<std::uint8_t>(id & 0xff);
}

// Offset just past the name at `pos` (labels ending in the root label or a compression
// pointer), or 0 when it runs off the message.
std::size_t name_end(std::span<const std::uint8_t> msg, std::size_t pos)
{
    while (pos < msg.size()) {
        std::uint8_t len = msg[pos];
        if (len == 0) return pos + 1;
        if ((len & 0xc0) == 0xc0) return 2 <= msg.size() - pos ? pos + 2 : 0;
        if (len & 0xc0) return 0;
        pos += 1u + len;
    }
    return 0;
}

// The OPT record of a reply (RFC 6891), as its bytes, or empty when it has none or cannot
// be read that far.
std::span<const std::uint8_t> opt_record(std::span<const std::uint8_t> reply)
{
    constexpr unsigned rr_type_opt = 41;
    std::size_t pos = question_end(reply);
    if (pos == 0) return {};
    auto count = [&](std::size_t at) { return static_cast<unsigned>((reply[at] << 8) | reply[at + 1]); };
    unsigned before_additional = count(6) + count(8), records = before_additional + count(10);
    for (unsigned i = 0; i < records; ++i) {
        std::size_t start = pos;
        pos = name_end(reply, pos);
        if (pos == 0 || 10 > reply.size() - pos) return {};
        unsigned type = count(pos), rdlength = count(pos + 8);
        pos += 10;
        if (rdlength > reply.size() - pos) return {};
        pos += rdlength;
        if (type == rr_type_opt && i >= before_additional) return reply.subspan(start, pos - start);
    }
    return {};
}

// A reply cut to header, question and OPT record with TC set, for a UDP client that cannot
// take more (the OPT stays: RFC 6891 section 7 wants it in every reply to an EDNS query;
// unless, as an upstream's may, it carries so much that the cut reply would exceed `limit`).
std::vector<std::uint8_t> truncated_copy(std::span<const std::uint8_t> reply,
                                         std::size_t limit = std::numeric_limits<std::size_t>::max())
{
    if (reply.size() < 12) return {};
    std::size_t end = question_end(reply);
    if (end == 0) end = 12;
    auto opt = opt_record(reply);
    if (end + opt.size() > limit) opt = {};
    std::vector<std::uint8_t> out(reply.begin(), reply.begin() + static_cast<std::ptrdiff_t>(end));
    out.insert(out.end(), opt.begin(), opt.end());
    out[2] |= 0x02;
    for (int i = 6; i < 12; ++i) out[static_cast<std::size_t>(i)] = 0;
    if (!opt.empty()) out[11] = 1;  // ARCOUNT
    return out;
}

// The same cut made in place, for an answer the rate limit lets out only as TC (what Knot and
// NSD call a slip): no allocation on the batch path. Returns the new size.
std::size_t truncate_in_place(std::span<std::uint8_t> reply)
{
    if (reply.size() < 12) return reply.size();
    bool has_question = reply[4] != 0 || reply[5] != 0;
    std::size_t end = has_question ? question_end(reply) : 0;
    if (end == 0) end = 12;
    auto opt = has_question ? opt_record(reply) : std::span<const std::uint8_t>{};
    // The OPT record lies after the question: moving it down overwrites nothing it still needs.
    if (!opt.empty()) std::memmove(reply.data() + end, opt.data(), opt.size());
    reply[2] |= 0x02;
    for (std::size_t i = 6; i < 12; ++i) reply[i] = 0;
    if (!opt.empty()) reply[11] = 1;  // ARCOUNT
    return end + opt.size();
}

// A reply the outgoing link will not carry unfragmented, cut to TC; empty when cutting would
// not make it smaller (it is cut already).
std::vector<std::uint8_t> cut_for_link(std::span<const std::uint8_t> reply)
{
    auto cut = truncated_copy(reply);
    if (cut.size() >= reply.size()) cut.clear();
    return cut;
}

std::uint16_t read16(std::span<const std::uint8_t> m, std::size_t at)
{
    return static_cast<std::uint16_t>((m[at] << 8) | m[at + 1]);
}
void write16(std::vector<std::uint8_t>& m, std::size_t at, std::size_t value)
{
    m[at] = static_cast<std::uint8_t>((value >> 8) & 0xff);
    m[at + 1] = static_cast<std::uint8_t>(value & 0xff);
}

// Every query mesd forwards carries an EDNS option of its own: code 65299, from the range
// RFC 6891 section 9 leaves for local use, holding a token drawn at start. A query that
// arrives with it is one mesd sent, come back through a forwarder that leads to mesd (or
// through mesd itself): forwarding it again would loop until every slot is taken. dnsmasq
// 2.90 passes unknown EDNS options through, so the loop is seen on its first turn. The
// upstreams learn nothing from the token but that the queries come from one mesd.
constexpr std::uint16_t loop_option_code = 65299;
using LoopToken = std::array<std::uint8_t, 8>;
constexpr std::size_t opt_fixed = 11;  // root name, type, class, TTL, RDLENGTH

// The query with the loop option added: to its OPT record, or in an OPT record of its own
// that asks for no more than a client without EDNS gets (512 bytes, RFC 6891 section 6.2.5).
// False when the query cannot carry it (left unmarked).
bool mark_query(std::vector<std::uint8_t>& q, const LoopToken& token)
{
    if (q.size() < 12) return false;
    std::array<std::uint8_t, 4 + std::tuple_size_v<LoopToken>> option{};
    option[0] = static_cast<std::uint8_t>(loop_option_code >> 8);
    option[1] = static_cast<std::uint8_t>(loop_option_code & 0xff);
    option[3] = static_cast<std::uint8_t>(token.size());
    std::copy(token.begin(), token.end(), option.begin() + 4);
    auto opt = opt_record(q);
    if (!opt.empty()) {
        auto at = static_cast<std::size_t>(opt.data() - q.data());
        if (opt.size() < opt_fixed || q[at] != 0) return false;
        std::size_t rdlength = read16(q, at + 9);
        if (option.size() > 0xffff - rdlength) return false;
        write16(q, at + 9, rdlength + option.size());
        q.insert(q.begin() + static_cast<std::ptrdiff_t>(at + opt.size()), option.begin(), option.end());
        return true;
    }
    std::size_t arcount = read16(q, 10);
    if (arcount == 0xffff) return false;
    const std::uint8_t record[opt_fixed] = {0, 0, 41, 0x02, 0x00, 0, 0, 0, 0, 0, static_cast<std::uint8_t>(option.size())};
    q.insert(q.end(), std::begin(record), std::end(record));
    q.insert(q.end(), option.begin(), option.end());
    write16(q, 10, arcount + 1);
    return true;
}

// Whether `q` carries the loop option with `token`: a query this mesd forwarded.
bool marked_by(std::span<const std::uint8_t> q, const LoopToken& token)
{
    auto opt = opt_record(q);
    if (opt.size() < opt_fixed) return false;
    std::size_t pos = opt_fixed;
    while (4 <= opt.size() - pos) {
        std::size_t code = read16(opt, pos), len = read16(opt, pos + 2);
        pos += 4;
        if (len > opt.size() - pos) return false;
        if (code == loop_option_code && len == token.size() && std::equal(token.begin(), token.end(), opt.begin() + static_cast<std::ptrdiff_t>(pos)))
            return true;
        pos += len;
    }
    return false;
}

// What makes two queries the same question to an upstream: the name (lowercase), type and
// class, RD and CD, and the whole OPT record but its UDP size (DO, cookies, ECS and the rest of
// the options shape the answer); empty when the question cannot be read.
std::string join_key(std::span<const std::uint8_t> q)
{
    std::size_t end = question_end(q);
    if (end == 0 || q[4] != 0 || q[5] != 1) return {};
    std::string key;
    key.reserve(end + 16);
    key.push_back(static_cast<char>(q[2] & 0x01));  // RD
    key.push_back(static_cast<char>(q[3] & 0x10));  // CD
    for (std::size_t i = 12; i < end; ++i) {
        auto c = q[i];
        if (i < end - 4 && c >= 'A' && c <= 'Z') c = static_cast<std::uint8_t>(c + 32);
        key.push_back(static_cast<char>(c));
    }
    auto opt = opt_record(q);
    if (opt.size() >= opt_fixed) {
        key.push_back('\1');
        key.append(reinterpret_cast<const char*>(opt.data()) + 5, opt.size() - 5);  // TTL (DO) and options
    }
    return key;
}

// The reply without its OPT record, for a client that sent none (RFC 6891 section 7: an OPT
// record only in a reply to a query that had one); the OPT came from the option mesd added.
void strip_opt(std::vector<std::uint8_t>& reply)
{
    auto opt = opt_record(reply);
    if (opt.empty()) return;
    auto at = opt.data() - reply.data();
    auto size = static_cast<std::ptrdiff_t>(opt.size());
    reply.erase(reply.begin() + at, reply.begin() + at + size);
    write16(reply, 10, read16(reply, 10) - 1u);
}

// Replies leave with DF set and are never fragmented here (RFC 9715 section 3.1). PROBE sets
// DF but ignores path MTU reports, which anyone could forge to make replies fragment or fail;
// a reply larger than the link takes fails with EMSGSIZE and goes out truncated instead.
int set_dont_fragment(int fd, int family)
{
    int probe4 = IP_PMTUDISC_PROBE;
    if (family == AF_INET6) {
        int probe6 = IPV6_PMTUDISC_PROBE, on = 1;
        if (::setsockopt(fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, &probe6, sizeof probe6) < 0 ||
            ::setsockopt(fd, IPPROTO_IPV6, IPV6_DONTFRAG, &on, sizeof on) < 0)
            return -errno;
        // IPv4 clients of a dual-stack socket are sent to through the IPv4 setting; a socket
        // that is IPv6 only has none.
        ::setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &probe4, sizeof probe4);
        return 0;
    }
    return ::setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &probe4, sizeof probe4) < 0 ? -errno : 0;
}

// A write request that owns its bytes until its callback runs.
struct Write {
    uv_write_t req{};
    std::vector<std::uint8_t> bytes;
};
struct UdpSend {
    uv_udp_send_t req{};
    std::vector<std::uint8_t> bytes;
    sockaddr_storage to{};
};

}  // namespace

struct TcpConnection;
struct Forward;
struct Probe;

// One upstream and what answering has shown of it. Shared by the forwards that chose it: the
// list can change (resolv.conf rewritten) while they are in flight; and by every server that
// shares a SharedLimits, so that what one server's forwards learn (a timeout, an answer, an
// RTT) every server ranks by. `address` and `name` never change once listed; the rest is read
// and written under `status` (SharedLimits::Common::mutex), from any server's loop thread
// and from Server::upstreams() on any thread.
struct Upstream {
    sockaddr_storage address{};
    std::string name;
    std::mutex* status = nullptr;
    // RFC 6298 section 2, in seconds: srtt and rttvar from the first sample, then smoothed
    // with gains 1/8 and 1/4, as Unbound and dnsdist rank their servers.
    double srtt = 0;
    double rttvar = 0;
    bool measured = false;
    std::uint32_t failures = 0;      // timeouts in a row
    Clock::time_point backoff_until{};
    bool probing = false;            // a probe is out, from one server: no other starts one
    std::uint64_t answers = 0;
    std::uint64_t timeouts = 0;

    // Failing upstreams come after every healthy one, soonest to be probed first. Under `status`.
    bool suspect() const { return failures > 0; }

    // `probe`: the answer is to this upstream's probe, which ends with it.
    void answered(std::optional<Clock::duration> rtt, bool probe = false)
    {
        std::lock_guard lock(*status);
        if (probe) probing = false;
        ++answers;
        failures = 0;
        backoff_until = {};
        if (!rtt) return;
        double r = std::chrono::duration<double>(*rtt).count();
        if (!measured) {
            srtt = r;
            rttvar = r / 2;
            measured = true;
            return;
        }
        rttvar = 0.75 * rttvar + 0.25 * std::abs(srtt - r);
        srtt = 0.875 * srtt + 0.125 * r;
    }

    // A timeout while already backed off or probed says nothing new (the forwards that chose
    // it before it failed time out one after another, on any server). The first may be one
    // lost datagram: a probe goes out at once. A probe's timeout (`probe`, which ends it)
    // confirms it: the next probe waits 1 s, then 2 s, doubling up to 64 s.
    void timed_out(Clock::time_point now, bool probe = false)
    {
        std::lock_guard lock(*status);
        if (probe) probing = false;
        ++timeouts;
        if (suspect() && (probing || now < backoff_until)) return;
        ++failures;
        backoff_until = failures == 1 ? now : now + std::chrono::seconds(1) * (1u << std::min<std::uint32_t>(failures - 2, 6));
    }

    // A probe ended with no verdict (its server stopping): another server may probe now.
    void probe_abandoned()
    {
        std::lock_guard lock(*status);
        probing = false;
    }
};

namespace {

// Best first: healthy upstreams by smoothed RTT (unmeasured ones first, srtt 0: each gets
// its first sample from real traffic), then the backed-off ones, soonest to be probed first.
// Under the records' mutex.
void best_first(std::vector<std::shared_ptr<Upstream>>& order)
{
    std::ranges::stable_sort(order, [](const std::shared_ptr<Upstream>& a, const std::shared_ptr<Upstream>& b) {
        if (a->suspect() != b->suspect()) return b->suspect();
        if (a->suspect()) return a->backoff_until < b->backoff_until;
        return a->srtt < b->srtt;
    });
}

// What one server hands another, from the other's thread: a forward that joined a question
// another server is asking upstream gets the answer (or the news that it failed); a TCP
// newcomer at tcpMaxClients gets the place of another server's oldest idle client. A
// uv_async_t on the receiving server's loop and a queue under a mutex; held by that server
// and by the shared state naming it, so that a post after the server closed it fails (and
// the sender takes it back), never reaching a closed handle.
struct Inbox {
    struct Message {
        enum class Kind {
            answer,   // `reply` (as the upstream sent it; empty: failed) for forward `id`
            evict,    // close your oldest idle client for newcomer `id` of `from`
            granted,  // a client was closed for newcomer `id`: its place is the newcomer's
            denied,   // nothing to close for newcomer `id`
        };
        Kind kind;
        std::uint64_t id = 0;
        std::vector<std::uint8_t> reply;
        std::shared_ptr<Inbox> from;
    };
    // A TCP client's rank for eviction: the lowest goes first. Idle ones by when they went
    // idle, then those in mid-message by when the message began (as each server's own lists
    // order them), in steady-clock nanoseconds; no_victim when the server has neither.
    static constexpr std::uint64_t reading_rank = std::uint64_t{1} << 62;
    static constexpr std::uint64_t no_victim = std::numeric_limits<std::uint64_t>::max();

    uv_async_t async{};
    // The rank of this server's first victim, published by its thread after every change
    // of its TCP lists, read by another server's at tcpMaxClients.
    std::atomic<std::uint64_t> evictable{no_victim};
    std::mutex mutex;
    bool open = false;             // under mutex
    std::vector<Message> queue;    // under mutex

    // Any thread; false when the inbox is closed (nothing was sent).
    bool post(Message m)
    {
        std::lock_guard lock(mutex);
        if (!open) return false;
        queue.push_back(std::move(m));
        uv_async_send(&async);
        return true;
    }
};

// A forward on another server waiting for a question asked here.
struct RemoteJoiner {
    std::shared_ptr<Inbox> inbox;
    std::uint64_t id = 0;
};

}  // namespace

// What the servers of one SharedLimits hold in common (one server's own with one loop): the
// forwarder's state, which makes N workers forward as one process would, and each server's
// inbox, through which they hand each other answers and TCP clients' places.
struct SharedLimits::Common {
    explicit Common(std::uint32_t max) : max_in_flight(max)
    {
        arc4random_buf(loop_token.data(), loop_token.size());
    }

    // maxInFlight, held across the servers: each Forward (joined ones too) takes a slot.
    bool take_slot() noexcept
    {
        std::size_t open = in_flight.load(std::memory_order_relaxed);
        do {
            if (open >= max_in_flight.load(std::memory_order_relaxed)) return false;
        } while (!in_flight.compare_exchange_weak(open, open + 1, std::memory_order_relaxed));
        return true;
    }
    void release_slot() noexcept { in_flight.fetch_sub(1, std::memory_order_relaxed); }

    std::atomic<std::uint32_t> max_in_flight;  // SharedLimits::set_limits() changes it
    // One token for every server: a query any of them forwarded that comes back to any of
    // them is known as a loop (the kernel may hand it to another worker's socket).
    LoopToken loop_token{};
    std::atomic<std::size_t> in_flight{0};
    // upstreams.size(), read without the lock for every query that might be forwarded.
    std::atomic<std::size_t> upstream_count{0};
    // Taken by the first server to start: it alone reads the upstream list (config or
    // resolv.conf), checks it again every recheckInterval and says what it leaves out, so an
    // operator hears each warning once, not once per worker.
    std::atomic<bool> list_taken{false};

    std::mutex mutex;
    // Under mutex: the list (replaced by the server that keeps it) and every record's
    // learnt state (Upstream::status is this mutex).
    std::vector<std::shared_ptr<Upstream>> upstreams;
    // Under mutex: when a forwarding loop was last reported (at most one warning in 10 s).
    std::optional<Clock::time_point> last_loop_report;
    // Under mutex: the forward asking upstream for each question now in flight, by
    // join_key(), with the forwards of other servers waiting for its answer (those of its own
    // server wait in Forward::joined).
    struct Asking {
        Server::Impl* server = nullptr;
        Forward* leader = nullptr;
        std::vector<RemoteJoiner> remote;
    };
    std::unordered_map<std::string, Asking> asking;

    // Each server's inbox, registered when it starts (and kept: a closed one takes no post).
    std::mutex peers_mutex;
    std::vector<std::shared_ptr<Inbox>> peers;  // under peers_mutex
};

SharedLimits::SharedLimits(const ServerOptions& options)
    : common_(std::make_unique<Common>(options.max_in_flight)),
      tcp_max_clients_(options.tcp_max_clients),
      tcp_max_clients_per_ip_(options.tcp_max_clients_per_ip)
{
    if (options.rate_limit.responses_per_second > 0) limiter_ = std::make_shared<RateLimiter>(options.rate_limit);
    rate_limit_ = options.rate_limit;
}

namespace {

bool same_rate_limit(const RateLimitSettings& a, const RateLimitSettings& b)
{
    return a.responses_per_second == b.responses_per_second && a.burst == b.burst && a.slip == b.slip &&
           a.ipv4_prefix == b.ipv4_prefix && a.ipv6_prefix == b.ipv6_prefix && a.table_size == b.table_size &&
           a.exempt == b.exempt;
}

}  // namespace

void SharedLimits::set_limits(const ServerOptions& options)
{
    tcp_max_clients_.store(options.tcp_max_clients, std::memory_order_relaxed);
    tcp_max_clients_per_ip_.store(options.tcp_max_clients_per_ip, std::memory_order_relaxed);
    common_->max_in_flight.store(options.max_in_flight, std::memory_order_relaxed);
    std::lock_guard lock(limiter_mutex_);
    if (same_rate_limit(rate_limit_, options.rate_limit)) return;
    // A new table: the old one's buckets were counted against other rates and prefixes.
    rate_limit_ = options.rate_limit;
    limiter_ = options.rate_limit.responses_per_second > 0 ? std::make_shared<RateLimiter>(options.rate_limit) : nullptr;
}

std::shared_ptr<RateLimiter> SharedLimits::limiter() const
{
    std::lock_guard lock(limiter_mutex_);
    return limiter_;
}

SharedLimits::~SharedLimits() = default;

// A UDP listener. libuv reports the socket readable (a uv_poll_t on a second descriptor of
// it); the datagrams are then read here, up to `mmsg_width` per recvmmsg, answered in order,
// and the answers sent with one sendmmsg: two system calls per batch instead of two per
// query. Fast-path answers are written straight into per-slot buffers, so answering
// allocates nothing. The uv_udp_t on the first descriptor sends what the socket would not
// take at once, and the answers of forwarded queries.
constexpr std::size_t mmsg_width = 32;
constexpr std::size_t query_slot = 4096;  // a larger datagram is dropped and counted
constexpr int batches_per_wakeup = 8;     // then the loop's other work gets its turn
struct UdpListener {
    uv_udp_t handle{};
    uv_poll_t reader{};
    int read_fd = -1;
    bool reading = false;
    Server::Impl* server = nullptr;
    std::array<mmsghdr, mmsg_width> in{};
    std::array<iovec, mmsg_width> in_iov{};
    std::array<sockaddr_storage, mmsg_width> from{};
    std::vector<std::uint8_t> buffer = std::vector<std::uint8_t>(mmsg_width * query_slot);
    // Replies of one batch: fast ones in place, general ones as their own bytes.
    std::array<FastReply, mmsg_width> fast;
    std::array<std::vector<std::uint8_t>, mmsg_width> general;
    std::array<mmsghdr, mmsg_width> out{};
    std::array<iovec, mmsg_width> out_iov{};
    std::size_t replies = 0;

    int start_reading();
    // One batch read and answered; false when the socket had no more waiting.
    bool read_batch();
    void queue_reply(const sockaddr_storage& to, std::uint8_t* data, std::size_t size);
    void send_replies();
    // One reply sent through libuv (outside a batch, or what a batch's sendmmsg left).
    void send_one(const sockaddr* to, std::vector<std::uint8_t> bytes);
    // A reply libuv could not send for EMSGSIZE, sent again by itself (libuv sends what it
    // queued in batches, and every reply of a failed batch gets the error of the one that
    // failed), and cut to TC only if it is too large by itself too.
    void send_alone(const sockaddr* to, std::span<const std::uint8_t> bytes);
    // The reader first (its descriptor closed after it), then the socket; then `this` is freed.
    void close();
    void close_socket();
};

struct Server::Impl {
    uv_loop_t* loop;
    const Responder& responder;
    Source& source;
    ServerOptions options;
    Metrics metrics;
    proxy::AcceptGuard accept_guard;
    std::vector<vip::Pool> allow;
    // The rate limiter, the TCP client counts and the forwarder's upstreams, maxInFlight,
    // loop token and join table: this server's own, or shared with the servers of the other
    // workers.
    std::shared_ptr<SharedLimits> limits;
    RateLimiter* limiter = nullptr;  // UDP only, when dns.rateLimit sets a rate
    std::shared_ptr<RateLimiter> limiter_held;  // what `limiter` points to, until reconfigure()
    SharedLimits::Common* common = nullptr;
    // With shared limits: what other servers hand this one (answers to the questions they
    // ask, TCP clients' places); closed, with the UDP listeners, once stopped.
    std::shared_ptr<Inbox> inbox;
    bool inbox_open = false;
    // Forwards of this server that joined a question another server is asking, by Forward::id.
    std::unordered_map<std::uint64_t, Forward*> waiting_remote;
    std::uint64_t last_forward_id = 0;
    // TCP newcomers at tcpMaxClients waiting for another server to close its oldest client
    // for them (not read, not yet counted among the open ones), by TcpConnection::newcomer_id.
    std::unordered_map<std::uint64_t, TcpConnection*> newcomers;
    std::uint64_t last_newcomer_id = 0;
    // One receive buffer for every forward and probe: libuv hands a datagram or a TCP read
    // to its callback before the next read, and what is kept is copied out at its size.
    std::vector<std::uint8_t> receive_buffer = std::vector<std::uint8_t>(max_udp);
    std::vector<sockaddr_storage> bound_addresses;
    std::set<std::string> refused_reported;
    uv_timer_t recheck{};
    bool recheck_open = false;
    std::list<Probe*> probes;
    std::size_t live_probes = 0;

    std::list<UdpListener*> udp_listeners;
    std::list<uv_tcp_t*> tcp_listeners;
    std::vector<std::string> bound;
    // Open TCP connections by what they are doing, each list oldest first, so that the one
    // to close for a newcomer at tcpMaxClients is at a front (RFC 7766 section 6.2.3): idle
    // ones by when they last did something, those in mid-message by when the message
    // began. Busy ones (forwards outstanding, replies unsent) are never evicted: their
    // answers are owed, and tcpIoTimeout bounds a reply the client does not take.
    std::list<TcpConnection*> tcp_idle;
    std::list<TcpConnection*> tcp_reading;
    std::list<TcpConnection*> tcp_busy;
    std::size_t tcp_open = 0;  // this server's (limits->tcp_clients() counts every server's)
    std::list<Forward*> forwards;
    // forwards.size(), for in_flight() on another thread.
    std::atomic<std::size_t> forwards_open{0};
    int open_listeners = 0;
    bool stopping = false;
    std::function<void()> on_stopped;

    Impl(uv_loop_t* l, const Responder& r, Source& s, ServerOptions o)
        : loop(l), responder(r), source(s), options(std::move(o))
    {
        limits = options.shared ? options.shared : std::make_shared<SharedLimits>(options);
        limiter_held = limits->limiter();
        limiter = limiter_held.get();
        common = &limits->common();
    }

    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;

    bool may_forward(const sockaddr* client) const
    {
        if (!options.forward_enabled || common->upstream_count.load(std::memory_order_relaxed) == 0) return false;
        auto a = address_of(client);
        return a && std::ranges::any_of(allow, [&](const vip::Pool& p) { return p.contains(*a); });
    }

    void count(const Response& r)
    {
        if (r.qtype) ++metrics.queries_by_qtype[r.qtype];
        if (r.action != Action::drop) ++metrics.queries_by_opcode[r.opcode];
        if (r.action == Action::reply) {
            ++metrics.replies_by_rcode[r.rcode];
            ++metrics.answered;
            if (r.fast) ++metrics.answered_fast;
            if (r.truncated) ++metrics.truncated;
        }
    }

    void warn(std::string_view message, std::string_view key, const std::string& value) const
    {
        if (options.on_warn) options.on_warn(message, key, value);
    }
    // The upstreams to try for one query, best first, and whether every one is backed off;
    // starts a probe of each backed-off one whose time has come and that no server probes.
    std::vector<std::shared_ptr<Upstream>> ranked(Clock::time_point now, bool& all_suspect);
    void start_due_probes(Clock::time_point now);
    // Under common->mutex: the backed-off upstreams whose probe is due, marked probing.
    std::vector<std::shared_ptr<Upstream>> claim_probes(Clock::time_point now);
    void start_probes(const std::vector<std::shared_ptr<Upstream>>& due);
    // What other servers posted: answers to forwards of this one that joined their
    // questions, requests to close a client for their newcomers and the replies to this
    // one's requests.
    void on_inbox();
    void close_inbox();

    // The rank (Inbox::evictable) of the client this server would close for a newcomer.
    std::uint64_t evictable_rank() const;
    void publish_evictable()
    {
        if (inbox) inbox->evictable.store(evictable_rank(), std::memory_order_relaxed);
    }
    // Closes this server's first victim, its place handed over; false when it has none.
    bool evict_own();
    // A newcomer with a place among tcpMaxClients: counted, read from now on.
    void admit(TcpConnection* c);
    // A newcomer without one: closed.
    void refuse(TcpConnection* c);
    // The upstreams from the config or resolv.conf, less mesd's own addresses.
    void refresh_upstreams(bool at_start);
    bool is_own(const sockaddr* address, const std::vector<sockaddr_storage>& interfaces) const;

    void maybe_stopped();
    void on_tcp_connection(uv_stream_t* listener);
    void start_forward(std::span<const std::uint8_t> query, const Response& r, Clock::time_point received,
                       uv_udp_t* udp, const sockaddr* client, TcpConnection* tcp);
};

// ---- TCP connections ----------------------------------------------------------------------

struct TcpConnection {
    enum class Place { none, idle, reading, busy };

    Server::Impl& server;
    uv_tcp_t tcp{};
    uv_timer_t timer{};
    int open_handles = 2;
    bool closing = false;
    std::vector<std::uint8_t> in;
    std::vector<Forward*> forwards;  // forwards not yet answered; told when this closes
    bool draining = false;
    bool drain_when_answered = false;  // the client half-closed: drain once forwards are answered
    bool paused = false;               // not read while its replies are backlogged
    uv_shutdown_t shutdown_req{};
    bool may_forward = false;
    std::string address;  // the client's address bytes, for tcpMaxClientsPerIp
    bool place_handed_over = false;  // evicted: its place among tcpMaxClients goes to the newcomer
    // Which of the server's lists holds this (none: not counted among the open ones).
    Place place = Place::none;
    std::list<TcpConnection*>::iterator self;
    // With servers sharing limits: when this took its place at the back of its list (steady
    // clock, ns), what the other servers compare their own first victims' with.
    std::uint64_t ranked_at = 0;
    // A newcomer waiting for another server to give up a client's place: its key in
    // Server::Impl::newcomers (0: none).
    std::uint64_t newcomer_id = 0;
    // Loop times (uv_now, ms): when the message now in `in` began, when each reply not yet
    // written was queued, when the connection last did anything; the deadline the timer
    // is set for (0: none).
    std::uint64_t message_started = 0;
    std::deque<std::uint64_t> unsent;
    std::uint64_t last_active = 0;
    std::uint64_t armed = 0;

    explicit TcpConnection(Server::Impl& s) : server(s)
    {
        tcp.data = this;
        timer.data = this;
    }

    void close();

    // While stopping: sends what is queued, then closes (uv_close alone would drop it).
    void drain()
    {
        if (closing || draining) return;
        draining = true;
        uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp));
        shutdown_req.data = this;
        if (uv_shutdown(&shutdown_req, reinterpret_cast<uv_stream_t*>(&tcp),
                        [](uv_shutdown_t* req, int) { static_cast<TcpConnection*>(req->data)->close(); }) < 0)
            close();
    }

    void close_handles()
    {
        auto on_close = [](uv_handle_t* h) {
            auto* c = static_cast<TcpConnection*>(h->data);
            if (--c->open_handles == 0) {
                Server::Impl& s = c->server;
                delete c;
                s.maybe_stopped();
            }
        };
        uv_close(reinterpret_cast<uv_handle_t*>(&tcp), on_close);
        uv_close(reinterpret_cast<uv_handle_t*>(&timer), on_close);
    }

    std::list<TcpConnection*>& list_of(Place p);

    // After anything happened on the connection: files it under what it does now (at the
    // back of its list: the newest there) and sets its deadline. `new_message`: a message
    // began in this read, so its place among those in mid-message is new too; a read that
    // only continues a message moves nothing and re-arms nothing.
    void settle(bool new_message = false)
    {
        if (closing) return;
        Place now = !in.empty() ? Place::reading
                  : !forwards.empty() || !unsent.empty() ? Place::busy
                                                         : Place::idle;
        bool moved = true;
        if (place == Place::none) {
            auto& to = list_of(now);
            to.push_back(this);
            self = std::prev(to.end());
        } else if (now != place || now == Place::idle || new_message) {
            list_of(now).splice(list_of(now).end(), list_of(place), self);
        } else {
            moved = false;
        }
        place = now;
        if (moved && server.inbox) {
            ranked_at = static_cast<std::uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
            server.publish_evictable();
        }
        arm();
    }

    // The timer at the nearest deadline: the message in progress and the oldest unsent
    // reply each get tcpIoTimeout from their start, however the bytes trickle (Knot's
    // tcp-io-timeout); between messages, with nothing unsent, tcpIdleTimeout from the last
    // activity.
    void arm()
    {
        auto io = static_cast<std::uint64_t>(server.options.tcp_io_timeout.count());
        std::uint64_t deadline = std::numeric_limits<std::uint64_t>::max();
        if (!in.empty()) deadline = std::min(deadline, message_started + io);
        if (!unsent.empty()) deadline = std::min(deadline, unsent.front() + io);
        if (in.empty() && unsent.empty())
            deadline = last_active + static_cast<std::uint64_t>(server.options.tcp_idle_timeout.count());
        if (deadline == armed) return;
        armed = deadline;
        std::uint64_t now = uv_now(server.loop);
        uv_timer_start(&timer, [](uv_timer_t* t) { static_cast<TcpConnection*>(t->data)->on_deadline(); },
                       deadline > now ? deadline - now : 0, 0);
    }

    void on_deadline()
    {
        armed = 0;
        std::uint64_t now = uv_now(server.loop);
        auto io = static_cast<std::uint64_t>(server.options.tcp_io_timeout.count());
        if ((!in.empty() && now >= message_started + io) || (!unsent.empty() && now >= unsent.front() + io)) {
            ++server.metrics.tcp_io_timeouts;
            close();
            return;
        }
        if (in.empty() && unsent.empty() &&
            now >= last_active + static_cast<std::uint64_t>(server.options.tcp_idle_timeout.count())) {
            // RFC 7766 section 6.2.3: a connection with queries outstanding is not idle.
            if (forwards.empty()) {
                close();
                return;
            }
            last_active = now;
        }
        arm();
    }

    // The client shut down its side (EOF) after its last query, as one-shot clients do: it
    // still reads, so the answers it is owed (its forwards, replies not yet written) go out
    // before the connection closes; closing at once would leave it to retry over a new
    // connection (RFC 7766 section 6.2.4), or, if it cannot, without answers. A partial
    // message left over will never complete.
    void on_peer_done()
    {
        uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp));
        if (!in.empty()) {
            close();
            return;
        }
        drain_when_answered = true;
        if (forwards.empty()) drain();
    }

    // Queues a reply; the caller settles the connection afterwards.
    void send(std::vector<std::uint8_t> reply)
    {
        if (closing || reply.empty()) return;
        auto* w = new Write;
        w->bytes.reserve(reply.size() + 2);
        w->bytes.push_back(static_cast<std::uint8_t>(reply.size() >> 8));
        w->bytes.push_back(static_cast<std::uint8_t>(reply.size() & 0xff));
        w->bytes.insert(w->bytes.end(), reply.begin(), reply.end());
        w->req.data = this;
        uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(w->bytes.data()), static_cast<unsigned>(w->bytes.size()));
        int rc = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&tcp), &buf, 1, [](uv_write_t* req, int status) {
            auto* write = reinterpret_cast<Write*>(req);
            auto* c = static_cast<TcpConnection*>(req->data);
            c->backlog_bytes -= sizeof(Write) + write->bytes.size();
            delete write;
            // Writes complete in the order they were queued.
            if (!c->unsent.empty()) c->unsent.pop_front();
            if (status < 0) {
                c->close();
                return;
            }
            c->last_active = uv_now(c->server.loop);
            c->resume_if_clear();
            c->settle();
        });
        if (rc < 0) {
            delete w;
            close();
            return;
        }
        backlog_bytes += sizeof(Write) + w->bytes.size();
        unsent.push_back(uv_now(server.loop));
    }

    // RFC 7766 section 8: 2-byte length framing; several messages may arrive in one read
    // and one message over several reads. A zero length closes the connection.
    void on_read(std::span<const std::uint8_t> data)
    {
        bool was_between = in.empty();
        in.insert(in.end(), data.begin(), data.end());
        std::uint64_t now = uv_now(server.loop);
        last_active = now;
        answer_waiting(was_between, now);
    }

    // Replies queued and not yet completed (their bytes and requests) that stop the client's
    // queries being answered and read: one 64 KiB read of pipelined queries made 2,000
    // replies at once, libuv completes them only on the next turn of the loop and queues
    // what the socket will not take without limit, and a client that pipelined without
    // reading held 1.8 MB of mesd's memory (1.8 GB at tcpMaxClients). As Knot writes a reply
    // before it reads the next query, the next are answered once the backlog is under one
    // largest message.
    static constexpr std::size_t write_backlog_limit = 65537;
    std::size_t backlog_bytes = 0;
    bool backlogged() const { return backlog_bytes > write_backlog_limit; }

    void start_reading()
    {
        uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp),
                      [](uv_handle_t*, size_t suggested, uv_buf_t* b) {
                          b->base = static_cast<char*>(std::malloc(suggested));
                          b->len = b->base ? suggested : 0;
                      },
                      [](uv_stream_t* s, ssize_t n, const uv_buf_t* b) {
                          auto* conn = static_cast<TcpConnection*>(s->data);
                          if (n > 0) conn->on_read(std::span<const std::uint8_t>(reinterpret_cast<std::uint8_t*>(b->base),
                                                                                 static_cast<std::size_t>(n)));
                          else if (n == UV_EOF) conn->on_peer_done();
                          else if (n < 0) conn->close();
                          std::free(b->base);
                      });
    }

    // After a write: the queries left waiting for the backlog to clear are answered, and
    // reading goes on once they are.
    void resume_if_clear()
    {
        if (!paused || closing || draining || backlogged()) return;
        paused = false;
        answer_waiting(false, uv_now(server.loop));
        if (!paused && !closing && !draining) start_reading();
    }

    // Answers the complete messages in `in`, up to a write backlog.
    void answer_waiting(bool was_between, std::uint64_t now)
    {
        // Every complete message is handled now, or once the backlog clears: one left for the
        // next read would wait for a read that a client expecting its answers never causes.
        std::size_t pos = 0;
        server.source.begin_batch();
        while (!closing && in.size() - pos >= 2 && !backlogged()) {
            std::size_t len = (static_cast<std::size_t>(in[pos]) << 8) | in[pos + 1];
            if (len == 0) {
                close();
                return;
            }
            if (in.size() - pos - 2 < len) break;
            auto received = Clock::now();
            std::span<const std::uint8_t> query(in.data() + pos + 2, len);
            Client client{true, may_forward};
            Response r = server.responder.respond(query, client, server.source);
            server.count(r);
            if (r.action == Action::reply) {
                send(std::move(r.wire));
                server.metrics.observe(std::chrono::duration<double>(Clock::now() - received).count());
            } else if (r.action == Action::forward) {
                server.start_forward(query, r, received, nullptr, nullptr, this);
            } else {
                ++server.metrics.dropped;
            }
            pos += 2 + len;
        }
        if (closing) return;
        in.erase(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(pos));
        if (!paused && backlogged()) {
            paused = true;
            uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp));
        }
        // Messages left over wait for the next read; a peer that only ever sends keeps its
        // buffer bounded by the framing (at most one partial 64 KiB message plus backlog).
        if (in.size() > 2 * 65537) {
            close();
            return;
        }
        // The deadline of a message runs from its first byte (its length prefix), not from
        // the latest: a timeout re-armed by every segment invites a slow-read attack (RFC
        // 7766 section 6.2.3), a client sending a byte a second holding its slot for minutes.
        bool new_message = !in.empty() && (was_between || pos > 0);
        if (new_message) message_started = now;
        settle(new_message);
    }
};

std::list<TcpConnection*>& TcpConnection::list_of(Place p)
{
    return p == Place::idle ? server.tcp_idle : p == Place::reading ? server.tcp_reading : server.tcp_busy;
}

// ---- Forwarding -----------------------------------------------------------------------------
//
// Upstreams are tried best first by smoothed RTT, dead ones backed off and probed, within a
// total wait (maxWait); upstreams that are mesd itself are left out, and a forwarded query
// that comes back is answered SERVFAIL instead of going round again.

struct Forward {
    Server::Impl& server;
    std::list<Forward*>::iterator self;
    std::vector<std::uint8_t> original;  // as the client sent it
    std::vector<std::uint8_t> query;     // with our ID and the loop option
    std::uint16_t client_id = 0;
    std::uint16_t client_udp_size = 512;
    bool client_edns = false;
    Clock::time_point received;
    Clock::time_point deadline;
    // Where the answer goes: a UDP listener and client address, or a TCP connection.
    uv_udp_t* udp_listener = nullptr;
    sockaddr_storage client{};
    bool via_tcp = false;
    TcpConnection* tcp_client = nullptr;  // cleared when the connection closes first

    std::vector<std::shared_ptr<Upstream>> order;  // best first, as ranked when it started
    std::size_t upstream = 0;
    Clock::time_point attempt_sent;
    uv_timer_t timer{};
    // Each attempt gets handles of its own: a closed handle lives on until its close
    // callback, so it cannot be reused for the next upstream.
    uv_udp_t* udp = nullptr;
    uv_tcp_t* tcp = nullptr;
    int open_handles = 0;
    bool done = false;
    std::vector<std::uint8_t> tcp_in;
    // A forward asking upstream is in the shared join table under `key`, and answers its
    // `joined` too: forwards of the same question that arrived meanwhile at this server and
    // ask nobody (those that arrived at another server are told through its inbox).
    std::string key;
    std::vector<Forward*> joined;
    // Unique on this server: how another server's leader names this forward in its inbox.
    std::uint64_t id = 0;
    // A forward waiting for another server's leader: the question's key in the join table.
    std::string remote_key;

    explicit Forward(Server::Impl& s) : server(s)
    {
        timer.data = this;
        uv_timer_init(server.loop, &timer);
        open_handles = 1;
    }

    Upstream& current() const { return *order[upstream]; }
    const sockaddr* current_address() const { return reinterpret_cast<const sockaddr*>(&current().address); }

    static void release(Forward* f)
    {
        if (--f->open_handles == 0) {
            Server::Impl& s = f->server;
            delete f;
            s.maybe_stopped();
        }
    }
    static void on_close(uv_handle_t* h) { release(static_cast<Forward*>(h->data)); }

    // Closes an attempt's handle; it is freed in its close callback, and the Forward with it
    // once its last handle is gone.
    template <class Handle>
    void close_attempt(Handle*& handle)
    {
        if (!handle) return;
        uv_close(reinterpret_cast<uv_handle_t*>(handle), [](uv_handle_t* h) {
            auto* f = static_cast<Forward*>(h->data);
            delete reinterpret_cast<Handle*>(h);
            release(f);
        });
        handle = nullptr;
    }

    void close_sockets()
    {
        close_attempt(udp);
        close_attempt(tcp);
    }

    // An attempt, UDP or TCP, waits `timeout` at most, and no more than its share of what is
    // left of the client's wait, so that every upstream still to try gets a turn before
    // `maxWait` ends.
    void arm_timeout()
    {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        auto share = left / static_cast<long>(order.size() - upstream);
        auto wait = std::clamp(share, std::chrono::milliseconds(1), server.options.forward_timeout);
        uv_timer_start(&timer, [](uv_timer_t* t) {
            auto* f = static_cast<Forward*>(t->data);
            ++f->server.metrics.upstream_timeouts;
            auto now = Clock::now();
            f->current().timed_out(now);
            f->server.start_due_probes(now);  // a lost datagram is found out before the next query
            f->next();
        }, static_cast<std::uint64_t>(wait.count()), 0);
    }

    // The answer to the question another forward asked, as this one's own (its ID and its
    // question's case, RFC 5452 section 9.1, set in it), or, when empty, its own SERVFAIL.
    void take_answer(std::vector<std::uint8_t> reply)
    {
        if (reply.empty()) {
            fail();
            return;
        }
        std::size_t end = question_end(reply);
        if (end != 0 && end == question_end(original))
            std::copy(original.begin() + 12, original.begin() + static_cast<std::ptrdiff_t>(end - 4), reply.begin() + 12);
        finish(std::move(reply));
    }

    void finish(std::vector<std::uint8_t> reply, bool failed = false)
    {
        if (done) return;
        done = true;
        server.forwards.erase(self);
        server.forwards_open.store(server.forwards.size(), std::memory_order_relaxed);
        server.common->release_slot();
        std::vector<RemoteJoiner> remote;
        if (!key.empty() || !remote_key.empty()) {
            std::lock_guard lock(server.common->mutex);
            auto& asking = server.common->asking;
            if (auto it = asking.find(key); !key.empty() && it != asking.end() && it->second.leader == this) {
                remote = std::move(it->second.remote);
                asking.erase(it);
            }
            // Given up waiting (or answered): the leader must not post to this one any more.
            if (auto it = asking.find(remote_key); !remote_key.empty() && it != asking.end())
                std::erase_if(it->second.remote,
                              [&](const RemoteJoiner& r) { return r.inbox == server.inbox && r.id == id; });
        }
        if (!remote_key.empty()) {
            server.waiting_remote.erase(id);
            remote_key.clear();
        }
        key.clear();
        auto waiting = std::move(joined);
        joined.clear();
        for (auto* j : waiting) j->take_answer(failed ? std::vector<std::uint8_t>{} : reply);
        for (auto& r : remote)
            r.inbox->post({Inbox::Message::Kind::answer, r.id, failed ? std::vector<std::uint8_t>{} : reply, nullptr});
        uv_timer_stop(&timer);
        close_sockets();
        uv_close(reinterpret_cast<uv_handle_t*>(&timer), on_close);
        if (tcp_client) std::erase(tcp_client->forwards, this);
        if (reply.empty() || (via_tcp && !tcp_client)) {  // nothing to send, or the client has gone
            if (tcp_client) tcp_client->settle();
            if (tcp_client && (server.stopping || tcp_client->drain_when_answered) && tcp_client->forwards.empty())
                tcp_client->drain();
            return;
        }
        set_id(reply, client_id);
        if (!client_edns) strip_opt(reply);
        std::uint16_t rcode = reply[3] & 0x0f;
        ++server.metrics.replies_by_rcode[rcode];
        server.metrics.observe(std::chrono::duration<double>(Clock::now() - received).count());
        if (tcp_client) {
            tcp_client->send(std::move(reply));
            tcp_client->settle();
            if ((server.stopping || tcp_client->drain_when_answered) && tcp_client->forwards.empty()) tcp_client->drain();
            return;
        }
        if (reply.size() > client_udp_size) {
            reply = truncated_copy(reply, client_udp_size);
            ++server.metrics.truncated;
        }
        static_cast<UdpListener*>(udp_listener->data)->send_one(reinterpret_cast<sockaddr*>(&client), std::move(reply));
    }

    void fail()
    {
        ++server.metrics.upstream_failures;
        finish(server.responder.error_reply(original, 2 /* SERVFAIL */, via_tcp ? 65535 : client_udp_size), true);
    }

    // Tries upstream `upstream` over UDP from a fresh socket (a fresh source port).
    void try_udp()
    {
        close_sockets();
        if (upstream >= order.size() || Clock::now() >= deadline) {
            fail();
            return;
        }
        if (server.stopping && upstream > 0) {
            fail();
            return;
        }
        set_id(query, static_cast<std::uint16_t>(arc4random() & 0xffff));
        const sockaddr* to = current_address();
        udp = new uv_udp_t;
        uv_udp_init(server.loop, udp);
        udp->data = this;
        ++open_handles;
        sockaddr_storage any{};
        if (to->sa_family == AF_INET6) uv_ip6_addr("::", 0, reinterpret_cast<sockaddr_in6*>(&any));
        else uv_ip4_addr("0.0.0.0", 0, reinterpret_cast<sockaddr_in*>(&any));
        uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(query.data()), static_cast<unsigned>(query.size()));
        attempt_sent = Clock::now();
        if (uv_udp_bind(udp, reinterpret_cast<sockaddr*>(&any), 0) < 0 ||
            uv_udp_recv_start(udp,
                              [](uv_handle_t* h, size_t, uv_buf_t* b) {
                                  auto& buffer = static_cast<Forward*>(h->data)->server.receive_buffer;
                                  *b = uv_buf_init(reinterpret_cast<char*>(buffer.data()), static_cast<unsigned>(buffer.size()));
                              },
                              [](uv_udp_t* h, ssize_t n, const uv_buf_t* b, const sockaddr* from, unsigned) {
                                  auto* f = static_cast<Forward*>(h->data);
                                  if (n <= 0 || !from || h != f->udp) return;
                                  f->on_udp_answer(std::span<const std::uint8_t>(reinterpret_cast<std::uint8_t*>(b->base),
                                                                                 static_cast<std::size_t>(n)),
                                                   from);
                              }) < 0 ||
            uv_udp_try_send(udp, &buf, 1, to) < 0) {
            next();
            return;
        }
        arm_timeout();
    }

    void next()
    {
        ++upstream;
        try_udp();
    }

    bool acceptable(std::span<const std::uint8_t> answer) const
    {
        return answer.size() >= 12 && (answer[2] & 0x80) && get_id(answer) == get_id(query) &&
               same_question(query, answer);
    }

    void on_udp_answer(std::span<const std::uint8_t> answer, const sockaddr* from)
    {
        if (!same_endpoint(from, current_address()) || !acceptable(answer)) {
            ++server.metrics.upstream_mismatched;  // spoofed or stale: keep waiting
            return;
        }
        current().answered(Clock::now() - attempt_sent);
        if (!client_edns && (answer[3] & 0x0f) == 1 /* FORMERR */ && query.size() != original.size()) {
            // An upstream that knows no EDNS refuses the OPT record mesd added (RFC 6891
            // section 7): asked again as the client asked, without the loop mark.
            query = original;
            try_udp();
            return;
        }
        if (answer[2] & 0x02) {  // TC: ask the same upstream over TCP
            ++server.metrics.upstream_tcp_retries;
            try_tcp();
            return;
        }
        finish(std::vector<std::uint8_t>(answer.begin(), answer.end()));
    }

    void try_tcp()
    {
        close_sockets();
        arm_timeout();
        tcp = new uv_tcp_t;
        uv_tcp_init(server.loop, tcp);
        tcp->data = this;
        ++open_handles;
        tcp_in.clear();
        auto* connect = new uv_connect_t;
        connect->data = this;
        int rc = uv_tcp_connect(connect, tcp, current_address(),
                                [](uv_connect_t* req, int status) {
                                    auto* f = static_cast<Forward*>(req->data);
                                    bool current = req->handle == reinterpret_cast<uv_stream_t*>(f->tcp);
                                    delete req;
                                    // A cancelled connect belongs to a closed attempt; the
                                    // Forward itself outlives it (its handle is not closed yet).
                                    if (status == UV_ECANCELED || f->done || !current) return;
                                    if (status < 0) {
                                        f->next();
                                        return;
                                    }
                                    f->on_tcp_connected();
                                });
        if (rc < 0) {
            delete connect;
            next();
        }
    }

    void on_tcp_connected()
    {
        auto* w = new Write;
        w->bytes.push_back(static_cast<std::uint8_t>(query.size() >> 8));
        w->bytes.push_back(static_cast<std::uint8_t>(query.size() & 0xff));
        w->bytes.insert(w->bytes.end(), query.begin(), query.end());
        uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(w->bytes.data()), static_cast<unsigned>(w->bytes.size()));
        if (uv_write(&w->req, reinterpret_cast<uv_stream_t*>(tcp), &buf, 1,
                     [](uv_write_t* req, int) { delete reinterpret_cast<Write*>(req); }) < 0) {
            delete w;
            next();
            return;
        }
        uv_read_start(reinterpret_cast<uv_stream_t*>(tcp),
                      [](uv_handle_t* h, size_t, uv_buf_t* b) {
                          auto& buffer = static_cast<Forward*>(h->data)->server.receive_buffer;
                          *b = uv_buf_init(reinterpret_cast<char*>(buffer.data()), static_cast<unsigned>(buffer.size()));
                      },
                      [](uv_stream_t* s, ssize_t n, const uv_buf_t* b) {
                          auto* f = static_cast<Forward*>(s->data);
                          if (s != reinterpret_cast<uv_stream_t*>(f->tcp)) return;
                          if (n < 0) {
                              f->next();
                              return;
                          }
                          f->tcp_in.insert(f->tcp_in.end(), b->base, b->base + n);
                          if (f->tcp_in.size() < 2) return;
                          std::size_t len = (static_cast<std::size_t>(f->tcp_in[0]) << 8) | f->tcp_in[1];
                          if (f->tcp_in.size() - 2 < len) return;
                          std::span<const std::uint8_t> answer(f->tcp_in.data() + 2, len);
                          if (!f->acceptable(answer)) {
                              ++f->server.metrics.upstream_mismatched;
                              f->next();
                              return;
                          }
                          f->current().answered(std::nullopt);
                          f->finish(std::vector<std::uint8_t>(answer.begin(), answer.end()));
                      });
    }
};

// A query sent to a backed-off upstream to learn whether it answers again, so that no client
// waits on an upstream that may still be dead: the forwards keep to the healthy ones
// meanwhile. Its answer (any answer) ends the back-off; its timeout doubles it.
struct Probe {
    Server::Impl& server;
    std::shared_ptr<Upstream> upstream;
    std::list<Probe*>::iterator self;
    uv_udp_t udp{};
    uv_timer_t timer{};
    int open_handles = 2;
    bool done = false;
    std::vector<std::uint8_t> query;
    Clock::time_point sent;

    Probe(Server::Impl& s, std::shared_ptr<Upstream> u) : server(s), upstream(std::move(u))
    {
        udp.data = timer.data = this;
        uv_udp_init(server.loop, &udp);
        uv_timer_init(server.loop, &timer);
        ++server.live_probes;  // `upstream` was marked probing when this was claimed
    }

    void start()
    {
        // ". NS", which every resolver answers (even if only REFUSED), with the loop option: a
        // probe that leads back to mesd comes back as SERVFAIL, not as another probe.
        query = {0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1};
        set_id(query, static_cast<std::uint16_t>(arc4random() & 0xffff));
        mark_query(query, server.common->loop_token);
        const sockaddr* to = reinterpret_cast<const sockaddr*>(&upstream->address);
        sockaddr_storage any{};
        if (to->sa_family == AF_INET6) uv_ip6_addr("::", 0, reinterpret_cast<sockaddr_in6*>(&any));
        else uv_ip4_addr("0.0.0.0", 0, reinterpret_cast<sockaddr_in*>(&any));
        uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(query.data()), static_cast<unsigned>(query.size()));
        sent = Clock::now();
        if (uv_udp_bind(&udp, reinterpret_cast<sockaddr*>(&any), 0) < 0 ||
            uv_udp_recv_start(&udp,
                              [](uv_handle_t* h, size_t, uv_buf_t* b) {
                                  auto& buffer = static_cast<Probe*>(h->data)->server.receive_buffer;
                                  *b = uv_buf_init(reinterpret_cast<char*>(buffer.data()), static_cast<unsigned>(buffer.size()));
                              },
                              [](uv_udp_t* h, ssize_t n, const uv_buf_t* b, const sockaddr* from, unsigned) {
                                  auto* p = static_cast<Probe*>(h->data);
                                  if (n <= 0 || !from || p->done) return;
                                  std::span<const std::uint8_t> answer(reinterpret_cast<std::uint8_t*>(b->base),
                                                                       static_cast<std::size_t>(n));
                                  if (!same_endpoint(from, reinterpret_cast<const sockaddr*>(&p->upstream->address)) ||
                                      answer.size() < 12 || !(answer[2] & 0x80) || get_id(answer) != get_id(p->query) ||
                                      !same_question(p->query, answer))
                                      return;
                                  p->close(true);
                                  p->upstream->answered(Clock::now() - p->sent, true);
                              }) < 0 ||
            uv_udp_try_send(&udp, &buf, 1, to) < 0) {
            close(true);
            upstream->timed_out(Clock::now(), true);
            return;
        }
        uv_timer_start(&timer, [](uv_timer_t* t) {
            auto* p = static_cast<Probe*>(t->data);
            p->close(true);
            p->upstream->timed_out(Clock::now(), true);
        }, static_cast<std::uint64_t>(server.options.forward_timeout.count()), 0);
    }

    // Ends the probe; `upstream` stays valid until the close callbacks run. `verdict`: the
    // caller reports the answer or timeout next, which ends the upstream's probing with it;
    // otherwise it ends here, and another server may probe.
    void close(bool verdict = false)
    {
        if (done) return;
        done = true;
        if (!verdict) upstream->probe_abandoned();
        server.probes.erase(self);
        auto on_close = [](uv_handle_t* h) {
            auto* p = static_cast<Probe*>(h->data);
            if (--p->open_handles > 0) return;
            Server::Impl& s = p->server;
            delete p;
            --s.live_probes;
            s.maybe_stopped();
        };
        uv_close(reinterpret_cast<uv_handle_t*>(&udp), on_close);
        uv_close(reinterpret_cast<uv_handle_t*>(&timer), on_close);
    }
};

std::vector<std::shared_ptr<Upstream>> Server::Impl::ranked(Clock::time_point now, bool& all_suspect)
{
    std::vector<std::shared_ptr<Upstream>> order, due;
    {
        std::lock_guard lock(common->mutex);
        order = common->upstreams;
        best_first(order);
        all_suspect = !order.empty() && std::ranges::all_of(order, [](const auto& u) { return u->suspect(); });
        due = claim_probes(now);
    }
    start_probes(due);
    return order;
}

void Server::Impl::start_due_probes(Clock::time_point now)
{
    std::vector<std::shared_ptr<Upstream>> due;
    {
        std::lock_guard lock(common->mutex);
        due = claim_probes(now);
    }
    start_probes(due);
}

std::vector<std::shared_ptr<Upstream>> Server::Impl::claim_probes(Clock::time_point now)
{
    // Claimed under the lock every server takes: however many servers see the back-off end
    // at once, one of them probes.
    std::vector<std::shared_ptr<Upstream>> due;
    if (stopping) return due;
    for (const auto& u : common->upstreams)
        if (u->suspect() && !u->probing && now >= u->backoff_until) {
            u->probing = true;
            due.push_back(u);
        }
    return due;
}

void Server::Impl::start_probes(const std::vector<std::shared_ptr<Upstream>>& due)
{
    for (const auto& u : due) {
        ++metrics.upstream_probes;
        auto* p = new Probe(*this, u);
        probes.push_front(p);
        p->self = probes.begin();
        p->start();
    }
}

void TcpConnection::close()
{
    if (closing) return;
    closing = true;
    if (place != Place::none) {
        list_of(place).erase(self);
        place = Place::none;
        --server.tcp_open;
        // An evicted connection's place passes to the newcomer that evicted it, never back to
        // the pool, where another worker's newcomer could take it first.
        if (!place_handed_over) server.limits->release_tcp_client();
        server.limits->release_address(address);
        server.publish_evictable();
    }
    // Forwards still waiting for this client answer nobody.
    for (auto* f : forwards) f->tcp_client = nullptr;
    forwards.clear();
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp));
    close_handles();
}

void Server::Impl::start_forward(std::span<const std::uint8_t> query, const Response& r, Clock::time_point received,
                                 uv_udp_t* udp, const sockaddr* client, TcpConnection* tcp)
{
    auto refuse = [&] {
        auto reply = responder.error_reply(query, 2 /* SERVFAIL */, tcp ? 65535 : r.client_udp_size);
        ++metrics.replies_by_rcode[2];
        if (tcp) tcp->send(std::move(reply));
        else if (!reply.empty()) static_cast<UdpListener*>(udp->data)->send_one(client, std::move(reply));
    };
    if (marked_by(query, common->loop_token)) {
        // A query mesd forwarded has come back: answering it is what ends the loop (SERVFAIL
        // goes back along the chain to the client), forwarding it again would repeat it until
        // every slot were taken.
        ++metrics.forward_loops;
        auto now = Clock::now();
        bool report = false;
        {
            std::lock_guard lock(common->mutex);
            auto& last = common->last_loop_report;
            if (!last || now - *last > std::chrono::seconds(10)) {
                last = now;
                report = true;
            }
        }
        if (report)
            warn("forwarding loop: a query mesd forwarded came back to it, answered SERVFAIL", "from",
                 tcp ? std::string("tcp") : describe(client));
        refuse();
        return;
    }
    if (stopping || !common->take_slot()) {
        ++metrics.forward_overload;
        refuse();
        return;
    }
    bool all_suspect = false;
    auto order = ranked(Clock::now(), all_suspect);
    if (all_suspect) {
        // Every upstream has just timed out and is being probed, or has failed its probe too:
        // waiting on them would only make the client's resolver wait (glibc asks twice, for
        // each search domain, for A and AAAA: 16 waits). SERVFAIL now moves it on at once.
        common->release_slot();
        ++metrics.forward_backed_off;
        refuse();
        return;
    }
    auto* f = new Forward(*this);
    forwards.push_front(f);
    f->self = forwards.begin();
    forwards_open.store(forwards.size(), std::memory_order_relaxed);
    f->id = ++last_forward_id;
    f->original.assign(query.begin(), query.end());
    f->query = f->original;
    f->client_edns = !opt_record(query).empty();
    mark_query(f->query, common->loop_token);
    f->client_id = get_id(query);
    f->client_udp_size = r.client_udp_size;
    f->received = received;
    f->deadline = received + options.forward_max_wait;
    f->order = std::move(order);
    if (tcp) {
        f->via_tcp = true;
        f->tcp_client = tcp;
        tcp->forwards.push_back(f);
    } else {
        f->udp_listener = udp;
        std::memcpy(&f->client, client, client->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
    }
    // The same question already being asked, by this server or another: this one waits for
    // that answer. Besides sparing the upstreams a burst of identical queries (as Unbound and
    // dnsmasq merge them), this ends a loop through a forwarder that strips mesd's loop
    // option: the query that comes back, to whichever worker, joins the forward it came from
    // instead of being forwarded again, which would repeat until every maxInFlight slot were
    // taken by one client query.
    auto key = join_key(query);
    Forward* leader = nullptr;
    bool remote = false;
    if (!key.empty()) {
        std::lock_guard lock(common->mutex);
        auto& asking = common->asking;
        if (auto it = asking.find(key); it == asking.end()) {
            asking.emplace(key, SharedLimits::Common::Asking{this, f, {}});
            f->key = key;
        } else if (it->second.server == this) {
            leader = it->second.leader;
        } else if (inbox) {
            it->second.remote.push_back({inbox, f->id});
            remote = true;
        }
        // (Another server's question, and no inbox to hear its answer: asked upstream anew.)
    }
    if (leader || remote) ++metrics.forward_joined;
    else ++metrics.forwarded;
    if (leader) {
        leader->joined.push_back(f);
        return;
    }
    if (remote) {
        f->remote_key = std::move(key);
        waiting_remote.emplace(f->id, f);
        // The other server answers within its own maxWait; should its loop be held up, this
        // one still answers its client, with SERVFAIL, a forward timeout after its own.
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(f->deadline - Clock::now()) + options.forward_timeout;
        uv_timer_start(&f->timer, [](uv_timer_t* t) { static_cast<Forward*>(t->data)->fail(); },
                       static_cast<std::uint64_t>(std::max<std::int64_t>(left.count(), 1)), 0);
        return;
    }
    f->try_udp();
}

// ---- Listeners --------------------------------------------------------------------------------

bool UdpListener::read_batch()
{
    for (std::size_t i = 0; i < mmsg_width; ++i) {
        in_iov[i] = iovec{buffer.data() + i * query_slot, query_slot};
        in[i].msg_hdr = msghdr{};
        in[i].msg_hdr.msg_name = &from[i];
        in[i].msg_hdr.msg_namelen = sizeof from[i];
        in[i].msg_hdr.msg_iov = &in_iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
    }
    int n = ::recvmmsg(read_fd, in.data(), mmsg_width, MSG_DONTWAIT, nullptr);
    if (n <= 0) return false;
    // Every reply of the batch leaves with the batch's sendmmsg: each query's latency runs from
    // the batch's arrival to then, so one clock read at each end serves the whole batch.
    auto received = Clock::now();
    // Fast replies (A, AAAA, TXT or PTR, NOERROR or NXDOMAIN) counted here, added to the
    // metrics' counters once per batch.
    constexpr std::uint16_t rcode_noerror = 0, rcode_nxdomain = 3;
    constexpr std::array<std::uint16_t, 4> fast_qtypes = {1, 28, 16, 12};  // A, AAAA, TXT, PTR
    std::array<std::array<std::uint32_t, 2>, fast_qtypes.size()> fast_counts{};  // [qtype][is NXDOMAIN]
    Server::Impl& s = *server;
    s.source.begin_batch();
    // Rate limiting comes first: a dropped answer costs no lookup (nor a prefetch), which is
    // what most of a flood gets.
    std::array<RateLimiter::Verdict, mmsg_width> verdicts;
    verdicts.fill(RateLimiter::Verdict::pass);
    if (s.limiter) {
        auto now_ms = static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::milliseconds>(received.time_since_epoch()).count());
        for (std::size_t i = 0; i < static_cast<std::size_t>(n); ++i)
            if (!(in[i].msg_hdr.msg_flags & MSG_TRUNC))  // dropped below, and no answer to count
                verdicts[i] = s.limiter->check(reinterpret_cast<const sockaddr*>(&from[i]), now_ms);
    }
    if (s.responder.settings().fast_path) {
        std::array<std::span<const std::uint8_t>, mmsg_width> queries;
        std::size_t answering = 0;
        for (int i = 0; i < n; ++i)
            if (verdicts[static_cast<std::size_t>(i)] != RateLimiter::Verdict::drop)
                queries[answering++] = {buffer.data() + static_cast<std::size_t>(i) * query_slot,
                                        in[static_cast<std::size_t>(i)].msg_len};
        s.responder.prefetch(std::span(queries.data(), answering), s.source);
    }
    for (int i = 0; i < n; ++i) {
        const auto* src = reinterpret_cast<const sockaddr*>(&from[static_cast<std::size_t>(i)]);
        if (in[static_cast<std::size_t>(i)].msg_hdr.msg_flags & MSG_TRUNC) {
            ++s.metrics.dropped;
            continue;
        }
        auto verdict = verdicts[static_cast<std::size_t>(i)];
        if (verdict == RateLimiter::Verdict::drop) {
            ++s.metrics.rate_limited_dropped;
            continue;
        }
        bool slip = verdict == RateLimiter::Verdict::slip;
        std::span<const std::uint8_t> query(buffer.data() + static_cast<std::size_t>(i) * query_slot,
                                            in[static_cast<std::size_t>(i)].msg_len);
        Client client{false, s.may_forward(src)};
        FastReply& f = fast[replies];
        if (s.responder.settings().fast_path && s.responder.answer_fast(query, client, s.source, f)) {
            auto kind = static_cast<std::size_t>(std::ranges::find(fast_qtypes, f.qtype) - fast_qtypes.begin());
            ++fast_counts[std::min(kind, fast_qtypes.size() - 1)][f.rcode == rcode_nxdomain ? 1 : 0];
            if (slip) {
                f.size = static_cast<std::uint16_t>(truncate_in_place(std::span(f.wire.data(), f.size)));
                ++s.metrics.rate_limited_slipped;
                ++s.metrics.truncated;
            }
            queue_reply(from[static_cast<std::size_t>(i)], f.wire.data(), f.size);
            continue;
        }
        Response r = s.responder.answer_general(query, client, s.source);
        if (slip && r.action == Action::forward) {
            // Nothing goes upstream for a limited source: it gets the empty TC reply it would
            // have had for a local name, and may ask again over TCP.
            r.wire = s.responder.error_reply(query, 0, r.client_udp_size);
            r.action = r.wire.empty() ? Action::drop : Action::reply;
            r.rcode = 0;
        }
        if (slip && r.action == Action::reply) {
            r.wire.resize(truncate_in_place(r.wire));
            r.truncated = true;
            ++s.metrics.rate_limited_slipped;
        }
        s.count(r);
        if (r.action == Action::drop) {
            ++s.metrics.dropped;
            continue;
        }
        if (r.action == Action::forward) {
            s.start_forward(query, r, received, &handle, src, nullptr);
            continue;
        }
        general[replies] = std::move(r.wire);
        queue_reply(from[static_cast<std::size_t>(i)], general[replies].data(), general[replies].size());
    }
    for (std::size_t kind = 0; kind < fast_qtypes.size(); ++kind)
        for (std::size_t nx = 0; nx < 2; ++nx)
            if (std::uint32_t c = fast_counts[kind][nx]) {
                s.metrics.queries_by_qtype[fast_qtypes[kind]] += c;
                s.metrics.replies_by_rcode[nx ? rcode_nxdomain : rcode_noerror] += c;
                s.metrics.answered += c;
                s.metrics.answered_fast += c;
                s.metrics.queries_by_opcode[0] += c;  // the fast path answers QUERY only
            }
    if (replies) s.metrics.observe(std::chrono::duration<double>(Clock::now() - received).count(), replies);
    send_replies();
    return static_cast<std::size_t>(n) == mmsg_width;
}

int UdpListener::start_reading()
{
    reading = true;
    return uv_poll_start(&reader, UV_READABLE, [](uv_poll_t* p, int status, int) {
        auto* l = static_cast<UdpListener*>(p->data);
        if (status < 0) {
            // libuv stops the watcher on POLLERR. A UDP socket's error is a pending ICMP
            // report, which the next read returns and clears: read on, and watch again.
            ++l->server->metrics.dropped;
            l->read_batch();
            if (l->reading) uv_poll_start(p, UV_READABLE, p->poll_cb);
            return;
        }
        for (int i = 0; i < batches_per_wakeup && l->reading && l->read_batch(); ++i) {
        }
    });
}

void UdpListener::close()
{
    if (read_fd < 0) {
        close_socket();
        return;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&reader), [](uv_handle_t* h) {
        auto* self = static_cast<UdpListener*>(h->data);
        ::close(self->read_fd);
        self->read_fd = -1;
        self->close_socket();
    });
}

void UdpListener::close_socket()
{
    uv_close(reinterpret_cast<uv_handle_t*>(&handle), [](uv_handle_t* h) {
        auto* self = static_cast<UdpListener*>(h->data);
        Server::Impl* impl = self->server;
        delete self;
        --impl->open_listeners;
        impl->maybe_stopped();
    });
}

void UdpListener::queue_reply(const sockaddr_storage& to, std::uint8_t* data, std::size_t size)
{
    out_iov[replies] = iovec{data, size};
    out[replies].msg_hdr = msghdr{};
    out[replies].msg_hdr.msg_name = const_cast<sockaddr_storage*>(&to);
    out[replies].msg_hdr.msg_namelen = to.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    out[replies].msg_hdr.msg_iov = &out_iov[replies];
    out[replies].msg_hdr.msg_iovlen = 1;
    ++replies;
}

void UdpListener::send_replies()
{
    std::size_t sent = 0;
    while (sent < replies) {
        int rc = ::sendmmsg(read_fd, out.data() + sent, static_cast<unsigned>(replies - sent), MSG_DONTWAIT);
        if (rc > 0) {
            sent += static_cast<std::size_t>(rc);
            continue;
        }
        if (rc < 0 && errno == EMSGSIZE) {
            // Larger than the outgoing link takes unfragmented (the socket sets DF): the
            // client gets TC instead, and asks again over TCP.
            std::span<const std::uint8_t> reply(static_cast<const std::uint8_t*>(out_iov[sent].iov_base), out_iov[sent].iov_len);
            auto cut = cut_for_link(reply);
            if (cut.empty()) {
                ++server->metrics.dropped;
                ++sent;
                continue;
            }
            general[sent] = std::move(cut);
            out_iov[sent] = iovec{general[sent].data(), general[sent].size()};
            ++server->metrics.truncated;
            continue;
        }
        break;
    }
    // What the socket would not take now is queued through libuv, which sends it once the
    // socket is writable.
    for (; sent < replies; ++sent) {
        const auto* base = static_cast<const std::uint8_t*>(out_iov[sent].iov_base);
        send_one(static_cast<const sockaddr*>(out[sent].msg_hdr.msg_name), {base, base + out_iov[sent].iov_len});
    }
    for (std::size_t i = 0; i < replies; ++i) general[i].clear();
    replies = 0;
}

void UdpListener::send_one(const sockaddr* to, std::vector<std::uint8_t> bytes)
{
    // Replies the socket would not take wait in libuv's queue, which has no bound of its own:
    // when the outgoing link is what is full (a flood of small queries for large answers),
    // it grew by the flood's whole excess, 21 MB in 4 s on an 8 Mbit/s link, and sent the
    // replies seconds late. Past about one default socket buffer more (net.core.wmem_default,
    // 208 KiB), a reply is dropped and counted, as a UDP server under overload drops.
    constexpr std::size_t send_queue_limit = 256 * 1024;
    if (uv_udp_get_send_queue_size(&handle) > send_queue_limit) {
        ++server->metrics.dropped;
        return;
    }
    auto* send = new UdpSend;
    send->bytes = std::move(bytes);
    std::memcpy(&send->to, to, to->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
    uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(send->bytes.data()), static_cast<unsigned>(send->bytes.size()));
    int rc = uv_udp_send(&send->req, &handle, &buf, 1, to, [](uv_udp_send_t* req, int status) {
        std::unique_ptr<UdpSend> done(reinterpret_cast<UdpSend*>(req));
        // A listener being closed gets its sends back cancelled, or with the error they met:
        // nothing more is sent through it.
        if (status != UV_EMSGSIZE || uv_is_closing(reinterpret_cast<uv_handle_t*>(req->handle))) return;
        static_cast<UdpListener*>(req->handle->data)->send_alone(reinterpret_cast<const sockaddr*>(&done->to), done->bytes);
    });
    if (rc < 0) delete send;
}

void UdpListener::send_alone(const sockaddr* to, std::span<const std::uint8_t> bytes)
{
    uv_os_fd_t fd = -1;
    if (uv_fileno(reinterpret_cast<uv_handle_t*>(&handle), &fd) != 0) return;
    socklen_t len = to->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    if (::sendto(fd, bytes.data(), bytes.size(), MSG_DONTWAIT, to, len) >= 0) return;
    if (errno == EMSGSIZE) {
        // As in send_replies: too large for the link, so TC instead.
        auto cut = cut_for_link(bytes);
        if (!cut.empty()) {
            ++server->metrics.truncated;
            if (::sendto(fd, cut.data(), cut.size(), MSG_DONTWAIT, to, len) >= 0) return;
        }
    }
    // The socket's buffer is full (or the cut reply too large as well): dropped, as a UDP
    // server under overload drops, and counted.
    ++server->metrics.dropped;
}

void Server::Impl::on_tcp_connection(uv_stream_t* listener)
{
    auto* c = new TcpConnection(*this);
    uv_tcp_init(loop, &c->tcp);
    uv_timer_init(loop, &c->timer);
    if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&c->tcp)) < 0) {
        c->close();
        return;
    }
    if (!accept_guard.serving(listener)) {
        ++metrics.tcp_refused;
        c->close();
        return;
    }
    if (stopping) {
        ++metrics.tcp_refused;
        c->close();
        return;
    }
    sockaddr_storage peer{};
    int namelen = sizeof peer;
    uv_tcp_getpeername(&c->tcp, reinterpret_cast<sockaddr*>(&peer), &namelen);
    const auto* peer_sa = reinterpret_cast<const sockaddr*>(&peer);
    c->may_forward = may_forward(peer_sa);
    // One address may hold only so many connections (RFC 7766 section 6.2.2; accepted, then
    // closed at once, as Unbound's tcp-connection-limit and dnsdist's per-client limit do),
    // counted across every worker's server.
    if (limits->tcp_max_clients_per_ip() > 0) {
        if (peer_sa->sa_family == AF_INET)
            c->address.assign(reinterpret_cast<const char*>(&reinterpret_cast<const sockaddr_in*>(peer_sa)->sin_addr), 4);
        else if (peer_sa->sa_family == AF_INET6)
            c->address.assign(reinterpret_cast<const char*>(&reinterpret_cast<const sockaddr_in6*>(peer_sa)->sin6_addr), 16);
        if (!limits->take_address(c->address)) {
            ++metrics.tcp_refused_per_ip;
            c->close();
            return;
        }
    }
    // At tcpMaxClients (across every worker's server) the newcomer takes the place of the
    // connection that least deserves one: the longest idle, else the one whose message has
    // been arriving the longest (RFC 7766 section 6.2.3: under heavy load or attack a server
    // may use zero idle timeouts), so that slow clients cannot lock new ones out. That is
    // the first of every server's, as one process would choose: when another server's comes
    // first (each publishes the rank of its own), that server is asked to close it (only its
    // thread may) and the newcomer waits, unread, for its place or for a refusal.
    if (!limits->take_tcp_client()) {
        std::shared_ptr<Inbox> holder;
        std::uint64_t best = Inbox::no_victim;
        if (inbox) {
            std::lock_guard lock(common->peers_mutex);
            for (const auto& p : common->peers)
                if (p != inbox)
                    if (auto rank = p->evictable.load(std::memory_order_relaxed); rank < best) {
                        best = rank;
                        holder = p;
                    }
        }
        if (holder && best < evictable_rank()) {
            c->newcomer_id = ++last_newcomer_id;
            newcomers.emplace(c->newcomer_id, c);
            if (holder->post({Inbox::Message::Kind::evict, c->newcomer_id, {}, inbox})) return;
            newcomers.erase(c->newcomer_id);
            c->newcomer_id = 0;
        }
        if (!evict_own()) {
            refuse(c);
            return;
        }
    }
    admit(c);
}

std::uint64_t Server::Impl::evictable_rank() const
{
    if (!tcp_idle.empty()) return tcp_idle.front()->ranked_at;
    if (!tcp_reading.empty()) return Inbox::reading_rank | tcp_reading.front()->ranked_at;
    return Inbox::no_victim;
}

bool Server::Impl::evict_own()
{
    // Busy ones (forwards outstanding, replies unsent) are never evicted: their answers are owed.
    TcpConnection* victim = !tcp_idle.empty()      ? tcp_idle.front()
                          : !tcp_reading.empty() ? tcp_reading.front()
                                                 : nullptr;
    if (!victim) return false;
    ++metrics.tcp_evicted;
    // Its place passes to the newcomer, never back to the pool, where another worker's
    // newcomer could take it first.
    victim->place_handed_over = true;
    victim->close();
    return true;
}

void Server::Impl::admit(TcpConnection* c)
{
    ++tcp_open;
    ++metrics.tcp_connections;
    uv_tcp_nodelay(&c->tcp, 1);
    c->last_active = uv_now(loop);
    c->settle();
    c->start_reading();
}

void Server::Impl::refuse(TcpConnection* c)
{
    ++metrics.tcp_refused;
    limits->release_address(c->address);
    c->close();
}

void Server::Impl::maybe_stopped()
{
    if (!stopping || !forwards.empty() || tcp_open > 0) return;
    // No forward of this server waits for another's answer any more, and none will start.
    close_inbox();
    if (!udp_listeners.empty()) {
        for (auto* u : udp_listeners) u->close();
        udp_listeners.clear();
        return;
    }
    if (open_listeners > 0 || live_probes > 0) return;
    if (on_stopped) {
        auto done = std::move(on_stopped);
        on_stopped = nullptr;
        done();
    }
}

void Server::Impl::on_inbox()
{
    std::vector<Inbox::Message> messages;
    {
        std::lock_guard lock(inbox->mutex);
        messages.swap(inbox->queue);
    }
    using Kind = Inbox::Message::Kind;
    for (auto& m : messages) {
        switch (m.kind) {
        case Kind::answer:
            if (auto it = waiting_remote.find(m.id); it != waiting_remote.end())  // else: gave up waiting
                it->second->take_answer(std::move(m.reply));
            break;
        case Kind::evict:
            // The place goes to the asking server's newcomer; should that server have closed
            // its inbox meanwhile, back to the pool.
            if (!stopping && evict_own()) {
                if (!m.from->post({Kind::granted, m.id, {}, nullptr})) limits->release_tcp_client();
            } else {
                m.from->post({Kind::denied, m.id, {}, nullptr});
            }
            break;
        case Kind::granted:
        case Kind::denied: {
            auto it = newcomers.find(m.id);
            if (it == newcomers.end()) {  // closed while it waited (the server stopping)
                if (m.kind == Kind::granted) limits->release_tcp_client();
                break;
            }
            auto* c = it->second;
            newcomers.erase(it);
            c->newcomer_id = 0;
            // Denied: the other server's clients went busy or away meanwhile; a place may have
            // come free since, else this server's own first victim gives up its place.
            if (m.kind == Kind::granted || limits->take_tcp_client() || evict_own()) admit(c);
            else refuse(c);
            break;
        }
        }
    }
}

void Server::Impl::close_inbox()
{
    if (!inbox_open) return;
    inbox_open = false;
    std::vector<Inbox::Message> left;
    {
        std::lock_guard lock(inbox->mutex);
        inbox->open = false;
        left.swap(inbox->queue);
    }
    // Nothing here waits any more; what other servers wait for is answered.
    for (auto& m : left) {
        if (m.kind == Inbox::Message::Kind::evict) m.from->post({Inbox::Message::Kind::denied, m.id, {}, nullptr});
        else if (m.kind == Inbox::Message::Kind::granted) limits->release_tcp_client();
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&inbox->async), [](uv_handle_t* h) {
        auto* impl = static_cast<Server::Impl*>(h->data);
        --impl->open_listeners;
        impl->maybe_stopped();
    });
}

Server::Server(void* uv_loop, const Responder& responder, Source& source, ServerOptions options)
    : impl_(std::make_unique<Impl>(static_cast<uv_loop_t*>(uv_loop), responder, source, std::move(options)))
{
}

Server::~Server() = default;

namespace {

// A socket for a listener. With `reuse_port`: SO_REUSEPORT, set before bind as the kernel
// wants it on every socket of a port's group, and the options libuv's own bind would set
// (SO_REUSEADDR for TCP) or leave to the system (IPV6_V6ONLY, cleared here for UDP as libuv
// clears it for TCP), so that the sockets of every worker's server agree and each may join
// the others' port whatever the host's defaults. -errno on failure.
int listener_socket(int family, int type, bool reuse_port)
{
    int fd = ::socket(family, type | SOCK_CLOEXEC, 0);
    if (fd < 0 || !reuse_port) return fd < 0 ? -errno : fd;
    int on = 1, off = 0;
    if (::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0 ||
        (type == SOCK_STREAM && ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0) ||
        (family == AF_INET6 && ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) < 0)) {
        int err = errno;
        ::close(fd);
        return -err;
    }
    return fd;
}

socklen_t length_of(const sockaddr* sa) { return sa->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in); }

// A listener socket bound to `sa` (a port given, with reuse_port: libuv's bind cannot set
// SO_REUSEPORT on Linux, so the socket is made here and handed to libuv).
std::expected<int, std::string> bound_socket(const sockaddr* sa, int type, bool reuse_port)
{
    int fd = listener_socket(sa->sa_family, type, reuse_port);
    if (fd < 0) return std::unexpected(std::string("socket: ") + std::strerror(-fd));
    if (::bind(fd, sa, length_of(sa)) < 0) {
        int err = errno;
        ::close(fd);
        return std::unexpected(std::strerror(err));
    }
    return fd;
}

// A UDP and a TCP socket bound to one port the kernel chose, tried a few times.
std::expected<std::pair<int, int>, std::string> bind_pair(const sockaddr* sa, bool reuse_port)
{
    socklen_t len = length_of(sa);
    for (int attempt = 0; attempt < 32; ++attempt) {
        int tcp = listener_socket(sa->sa_family, SOCK_STREAM, reuse_port);
        int udp = listener_socket(sa->sa_family, SOCK_DGRAM, reuse_port);
        if (tcp < 0 || udp < 0) {
            int err = tcp < 0 ? -tcp : -udp;
            if (tcp >= 0) ::close(tcp);
            if (udp >= 0) ::close(udp);
            return std::unexpected(std::string("socket: ") + std::strerror(err));
        }
        sockaddr_storage chosen{};
        std::memcpy(&chosen, sa, len);
        socklen_t chosen_len = len;
        bool ok = ::bind(tcp, sa, len) == 0 && ::getsockname(tcp, reinterpret_cast<sockaddr*>(&chosen), &chosen_len) == 0;
        if (ok && reuse_port) {
            // The kernel's choice for TCP is a port no TCP socket uses, but a UDP bind with
            // SO_REUSEPORT would share the port with any UDP group of this user already on
            // it: it must be free for a socket that shares nothing.
            int probe = listener_socket(sa->sa_family, SOCK_DGRAM, false);
            int off = 0;
            if (probe >= 0 && sa->sa_family == AF_INET6) ::setsockopt(probe, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
            ok = probe >= 0 && ::bind(probe, reinterpret_cast<sockaddr*>(&chosen), len) == 0;
            if (probe >= 0) ::close(probe);
        }
        if (ok && ::bind(udp, reinterpret_cast<sockaddr*>(&chosen), len) == 0) return std::pair{udp, tcp};
        ::close(tcp);
        ::close(udp);
    }
    return std::unexpected("no port free for both UDP and TCP");
}

}  // namespace

std::expected<void, std::string> Server::start()
{
    auto& s = *impl_;
    for (const auto& cidr : s.options.allow)
        if (auto p = vip::Pool::parse(cidr)) s.allow.push_back(*p);
    if (s.options.shared) {
        // On the loop's thread or, for a worker's loop, before its thread starts.
        s.inbox = std::make_shared<Inbox>();
        if (int rc = uv_async_init(s.loop, &s.inbox->async, [](uv_async_t* a) { static_cast<Server::Impl*>(a->data)->on_inbox(); });
            rc < 0)
            return std::unexpected("dns: " + from_uv(rc));
        s.inbox->async.data = &s;
        s.inbox->open = true;
        s.inbox_open = true;
        ++s.open_listeners;
        std::lock_guard lock(s.common->peers_mutex);
        s.common->peers.push_back(s.inbox);
    }

    for (const auto& hp : s.options.listen) {
        auto addr = to_sockaddr(hp);
        if (!addr) return std::unexpected("dns.listen " + hp.to_string() + ": not an address");
        const sockaddr* sa = reinterpret_cast<const sockaddr*>(&*addr);

        // Port 0: one port free for both UDP and TCP, found with sockets bound here and
        // handed to libuv (a port the kernel picks for UDP may be taken for TCP).
        int udp_fd = -1, tcp_fd = -1;
        if (hp.port == 0) {
            auto pair = bind_pair(sa, s.options.reuse_port);
            if (!pair) return std::unexpected("dns.listen " + hp.to_string() + ": " + pair.error());
            std::tie(udp_fd, tcp_fd) = *pair;
        } else if (s.options.reuse_port) {
            auto bound_udp = bound_socket(sa, SOCK_DGRAM, true);
            if (!bound_udp) return std::unexpected("dns.listen " + hp.to_string() + " (udp): " + bound_udp.error());
            udp_fd = *bound_udp;
        }

        auto* listener = new UdpListener;
        listener->server = &s;
        uv_udp_t* udp = &listener->handle;
        uv_udp_init_ex(s.loop, udp, udp_fd >= 0 ? AF_UNSPEC : static_cast<unsigned>(sa->sa_family));
        udp->data = listener;
        s.udp_listeners.push_back(listener);
        ++s.open_listeners;
        if (int rc = udp_fd >= 0 ? uv_udp_open(udp, udp_fd) : uv_udp_bind(udp, sa, 0); rc < 0) {
            if (udp_fd >= 0) ::close(udp_fd);
            if (tcp_fd >= 0) ::close(tcp_fd);
            return std::unexpected("dns.listen " + hp.to_string() + " (udp): " + from_uv(rc));
        }
        uv_os_fd_t fd = -1;
        int dup_fd = uv_fileno(reinterpret_cast<uv_handle_t*>(udp), &fd) == 0 ? ::fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
        if (dup_fd < 0) return std::unexpected("dns.listen " + hp.to_string() + " (udp): " + std::strerror(errno));
        if (int rc = set_dont_fragment(dup_fd, sa->sa_family); rc < 0) {
            ::close(dup_fd);
            return std::unexpected("dns.listen " + hp.to_string() + " (udp): " + std::strerror(-rc));
        }
        if (int rc = uv_poll_init_socket(s.loop, &listener->reader, dup_fd); rc < 0) {
            ::close(dup_fd);
            return std::unexpected("dns.listen " + hp.to_string() + " (udp): " + from_uv(rc));
        }
        listener->read_fd = dup_fd;
        listener->reader.data = listener;
        if (int rc = listener->start_reading(); rc < 0)
            return std::unexpected("dns.listen " + hp.to_string() + " (udp): " + from_uv(rc));
        sockaddr_storage actual{};
        int len = sizeof actual;
        uv_udp_getsockname(udp, reinterpret_cast<sockaddr*>(&actual), &len);

        // TCP on the same port as UDP (which may have been chosen by the kernel).
        if (tcp_fd < 0 && s.options.reuse_port) {
            auto bound_tcp = bound_socket(reinterpret_cast<sockaddr*>(&actual), SOCK_STREAM, true);
            if (!bound_tcp) return std::unexpected("dns.listen " + hp.to_string() + " (tcp): " + bound_tcp.error());
            tcp_fd = *bound_tcp;
        }
        auto* tcp = new uv_tcp_t;
        uv_tcp_init(s.loop, tcp);
        tcp->data = &s;
        s.tcp_listeners.push_back(tcp);
        ++s.open_listeners;
        if (int rc = tcp_fd >= 0 ? uv_tcp_open(tcp, tcp_fd) : uv_tcp_bind(tcp, reinterpret_cast<sockaddr*>(&actual), 0); rc < 0) {
            if (tcp_fd >= 0) ::close(tcp_fd);
            return std::unexpected("dns.listen " + hp.to_string() + " (tcp): " + from_uv(rc));
        }
        if (int rc = uv_listen(reinterpret_cast<uv_stream_t*>(tcp), 1024, [](uv_stream_t* l, int status) {
                auto* server = static_cast<Server::Impl*>(l->data);
                if (status < 0) {
                    if (server->accept_guard.on_error(l, status)) ++server->metrics.tcp_accept_errors;
                    return;
                }
                server->on_tcp_connection(l);
            });
            rc < 0)
            return std::unexpected("dns.listen " + hp.to_string() + " (tcp): " + from_uv(rc));
        s.bound.push_back(describe(reinterpret_cast<sockaddr*>(&actual)));
        s.bound_addresses.push_back(actual);
    }
    // The first server of those sharing `limits` to start reads the upstream list and checks
    // it again (with its own listening addresses: every server binds the same); the others
    // forward to the list it keeps.
    if (s.options.forward_enabled && !s.common->list_taken.exchange(true)) {
        s.refresh_upstreams(true);
        // A timer, not a file watch: resolv.conf is often replaced by a rename (which a watch
        // on the file misses) and interface addresses change with no file at all; reading a
        // small file and the address list every two seconds costs next to nothing.
        uv_timer_init(s.loop, &s.recheck);
        s.recheck.data = &s;
        s.recheck_open = true;
        ++s.open_listeners;
        auto every = static_cast<std::uint64_t>(s.options.recheck_interval.count());
        uv_timer_start(&s.recheck, [](uv_timer_t* t) { static_cast<Server::Impl*>(t->data)->refresh_upstreams(false); },
                       every, every);
    }
    return {};
}

namespace {

// The addresses of this host's interfaces, for a wildcard listener's own addresses.
std::vector<sockaddr_storage> interface_addresses()
{
    std::vector<sockaddr_storage> out;
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0) return out;
    for (ifaddrs* i = list; i; i = i->ifa_next) {
        if (!i->ifa_addr || (i->ifa_addr->sa_family != AF_INET && i->ifa_addr->sa_family != AF_INET6)) continue;
        sockaddr_storage ss{};
        std::memcpy(&ss, i->ifa_addr, i->ifa_addr->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
        out.push_back(ss);
    }
    ::freeifaddrs(list);
    return out;
}

std::uint16_t port_of(const sockaddr* sa)
{
    return ntohs(sa->sa_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6*>(sa)->sin6_port
                                           : reinterpret_cast<const sockaddr_in*>(sa)->sin_port);
}

bool same_address(const sockaddr* a, const sockaddr* b)
{
    auto x = address_of(a), y = address_of(b);
    return x && y && *x == *y;
}

bool is_wildcard(const sockaddr* sa)
{
    static const in6_addr any6 = IN6ADDR_ANY_INIT;
    if (sa->sa_family == AF_INET) return reinterpret_cast<const sockaddr_in*>(sa)->sin_addr.s_addr == htonl(INADDR_ANY);
    return std::memcmp(&reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, &any6, sizeof any6) == 0;
}

bool is_loopback(const sockaddr* sa)
{
    if (sa->sa_family == AF_INET) return (ntohl(reinterpret_cast<const sockaddr_in*>(sa)->sin_addr.s_addr) >> 24) == 127;
    return IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr);
}

}  // namespace

// An upstream is mesd itself when it has the port of a listener and that listener's address,
// or, for a listener on every address, any address of this host (127.0.0.0/8 included: the
// whole block reaches the loopback interface). A dual-stack [::] listener takes IPv4 too.
bool Server::Impl::is_own(const sockaddr* address, const std::vector<sockaddr_storage>& interfaces) const
{
    for (const auto& b : bound_addresses) {
        const auto* mine = reinterpret_cast<const sockaddr*>(&b);
        if (port_of(mine) != port_of(address)) continue;
        if (!is_wildcard(mine)) {
            if (same_address(mine, address)) return true;
            continue;
        }
        if (mine->sa_family == AF_INET && address->sa_family != AF_INET) continue;
        if (is_loopback(address)) return true;
        for (const auto& i : interfaces)
            if (same_address(reinterpret_cast<const sockaddr*>(&i), address)) return true;
    }
    return false;
}

void Server::reconfigure(const ServerOptions& options)
{
    auto& s = *impl_;
    if (s.stopping) return;
    if (!s.options.shared) s.limits->set_limits(options);
    s.limiter_held = s.limits->limiter();
    s.limiter = s.limiter_held.get();
    s.options.allow = options.allow;
    s.allow.clear();
    for (const auto& cidr : s.options.allow)
        if (auto p = vip::Pool::parse(cidr)) s.allow.push_back(*p);
    s.options.forward_timeout = options.forward_timeout;
    s.options.forward_max_wait = options.forward_max_wait;
    s.options.tcp_idle_timeout = options.tcp_idle_timeout;
    s.options.tcp_io_timeout = options.tcp_io_timeout;
    s.options.upstreams = options.upstreams;
    // Only the server that keeps the shared list reads it (the others forward to that list).
    if (s.recheck_open) s.refresh_upstreams(false);
}

void Server::Impl::refresh_upstreams(bool at_start)
{
    bool from_file = options.upstreams.empty();
    auto wanted = from_file ? (options.resolv_conf.empty() ? std::vector<conf::HostPort>{} : read_nameservers(options.resolv_conf))
                            : options.upstreams;
    auto interfaces = interface_addresses();
    std::vector<std::shared_ptr<Upstream>> known;
    {
        std::lock_guard lock(common->mutex);
        known = common->upstreams;
    }
    std::vector<std::shared_ptr<Upstream>> chosen;
    for (const auto& hp : wanted) {
        auto address = to_sockaddr(hp);
        if (!address) continue;
        const auto* sa = reinterpret_cast<const sockaddr*>(&*address);
        std::string name = describe(sa);
        if (is_own(sa, interfaces)) {
            if (refused_reported.insert(name).second)
                warn("upstream left out: it is one of mesd's own listening addresses, asking it would loop", "upstream", name);
            continue;
        }
        if (std::ranges::any_of(chosen, [&](const auto& u) { return u->name == name; })) continue;
        // An upstream already known keeps what was learnt of it.
        auto it = std::ranges::find_if(known, [&](const auto& u) { return u->name == name; });
        if (it != known.end()) {
            chosen.push_back(*it);
            continue;
        }
        auto u = std::make_shared<Upstream>();
        u->status = &common->mutex;
        u->address = *address;
        u->name = name;
        chosen.push_back(std::move(u));
    }
    bool changed = chosen.size() != known.size() || !std::equal(chosen.begin(), chosen.end(), known.begin());
    bool none = chosen.empty();
    {
        // Only this server writes the list, so `known` is still what it holds.
        std::lock_guard lock(common->mutex);
        common->upstream_count.store(chosen.size(), std::memory_order_relaxed);
        common->upstreams = std::move(chosen);
    }
    if ((at_start || changed) && none)
        warn("no upstreams: names outside mesd's own are answered REFUSED", "source",
             from_file ? (options.resolv_conf.empty() ? std::string("none") : options.resolv_conf)
                       : std::string("dns.forward.upstreams"));
}

void Server::stop(std::function<void()> done)
{
    auto& s = *impl_;
    s.stopping = true;
    s.on_stopped = std::move(done);
    // UDP listeners stop reading now but stay open: forwards still in flight answer through
    // them. maybe_stopped() closes them once nothing is outstanding.
    for (auto* u : s.udp_listeners)
        if (u->reading) {
            u->reading = false;
            uv_poll_stop(&u->reader);
        }
    for (auto* t : s.tcp_listeners)
        uv_close(reinterpret_cast<uv_handle_t*>(t), [](uv_handle_t* h) {
            auto* impl = static_cast<Server::Impl*>(h->data);
            --impl->open_listeners;
            delete reinterpret_cast<uv_tcp_t*>(h);
            impl->maybe_stopped();
        });
    s.tcp_listeners.clear();
    if (s.recheck_open) {
        s.recheck_open = false;
        uv_close(reinterpret_cast<uv_handle_t*>(&s.recheck), [](uv_handle_t* h) {
            auto* impl = static_cast<Server::Impl*>(h->data);
            --impl->open_listeners;
            impl->maybe_stopped();
        });
    }
    // Newcomers waiting for another server to give up a client's place: refused (a place
    // granted after this goes back to the pool).
    std::vector<TcpConnection*> waiting;
    for (const auto& [id, c] : s.newcomers) waiting.push_back(c);
    s.newcomers.clear();
    for (auto* c : waiting) s.refuse(c);
    // A probe only informs later forwards: there are none.
    std::vector<Probe*> probes(s.probes.begin(), s.probes.end());
    for (auto* p : probes) p->close();
    // Connections with nothing outstanding close now; the rest once their answers are sent.
    std::vector<TcpConnection*> idle;
    for (const auto* list : {&s.tcp_idle, &s.tcp_reading, &s.tcp_busy})
        for (auto* c : *list)
            if (c->forwards.empty()) idle.push_back(c);
    for (auto* c : idle) c->drain();
    s.maybe_stopped();
}

std::vector<conf::HostPort> system_upstreams(const std::vector<conf::HostPort>& listen, const std::string& resolv_conf)
{
    std::vector<conf::HostPort> out;
    for (const auto& ns : read_nameservers(resolv_conf)) {
        auto address = vip::Address::parse(ns.host);
        if (!address) continue;
        bool loopback = (address->family == vip::Family::v4 && (address->value >> 24) == 127) ||
                        (address->family == vip::Family::v6 && address->value == 1);
        bool ours = std::ranges::any_of(listen, [&](const conf::HostPort& l) {
            if (l.port != 53) return false;
            // Listening on every address includes loopback (and the host's own addresses).
            if (l.host.empty() || l.host == "0.0.0.0" || l.host == "::") return loopback;
            auto mine = vip::Address::parse(l.host);
            return mine && *mine == *address;
        });
        if (!ours) out.push_back(ns);
    }
    return out;
}

std::vector<conf::HostPort> read_nameservers(const std::string& resolv_conf)
{
    std::vector<conf::HostPort> out;
    std::FILE* f = std::fopen(resolv_conf.c_str(), "r");
    if (!f) return out;
    char line[512];
    while (std::fgets(line, sizeof line, f)) {
        std::string text(line);
        if (!text.starts_with("nameserver")) continue;
        auto start = text.find_first_not_of(" \t", 10);
        if (start == std::string::npos) continue;
        auto end = text.find_first_of(" \t\r\n#;", start);
        std::string host = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
        if (auto pct = host.find('%'); pct != std::string::npos) host.resize(pct);  // fe80::1%eth0
        auto address = vip::Address::parse(host);
        if (address) out.push_back(conf::HostPort{address->to_string(), 53});
    }
    std::fclose(f);
    return out;
}

std::vector<std::string> Server::bound() const { return impl_->bound; }
const Metrics& Server::metrics() const { return impl_->metrics; }
std::size_t Server::in_flight() const { return impl_->forwards_open.load(std::memory_order_relaxed); }

std::vector<UpstreamStatus> Server::upstreams() const
{
    std::vector<UpstreamStatus> out;
    // Under the lock every server writes the records under: this may run on any thread.
    auto& common = *impl_->common;
    std::lock_guard lock(common.mutex);
    auto order = common.upstreams;
    best_first(order);
    for (const auto& u : order) {
        UpstreamStatus st;
        st.address = u->name;
        st.measured = u->measured;
        st.srtt_seconds = u->srtt;
        st.rttvar_seconds = u->rttvar;
        st.failures = u->failures;
        st.backed_off = u->suspect();
        st.answers = u->answers;
        st.timeouts = u->timeouts;
        out.push_back(std::move(st));
    }
    return out;
}

}  // namespace dns
