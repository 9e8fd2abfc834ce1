// Response rate limiting: the limiter alone (token accounting on an injected clock, slip,
// prefix grouping, the table bound, exemptions), the configuration keys, and the real mesd
// under a bounded UDP flood from a non-exempt loopback source.
#include "dns/rate_limit.hpp"
#include "test/support/dns.hpp"

#include "conf/conf.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

using namespace test_support;
using Verdict = dns::RateLimiter::Verdict;

namespace {

std::vector<std::uint8_t> ip(const char* text)
{
    std::vector<std::uint8_t> out(16);
    if (::inet_pton(AF_INET, text, out.data()) == 1) {
        out.resize(4);
        return out;
    }
    REQUIRE(::inet_pton(AF_INET6, text, out.data()) == 1);
    return out;
}

dns::RateLimitSettings limit(std::uint32_t per_second, std::uint32_t burst = 0, std::uint32_t slip = 0)
{
    dns::RateLimitSettings s;
    s.responses_per_second = per_second;
    s.burst = burst;
    s.slip = slip;
    s.exempt.clear();
    return s;
}

// How many of `count` checks at `now` pass.
int passes(dns::RateLimiter& limiter, const char* source, int count, std::uint64_t now)
{
    int passed = 0;
    auto address = ip(source);
    for (int i = 0; i < count; ++i) passed += limiter.check(address, now) == Verdict::pass;
    return passed;
}

}  // namespace

TEST_CASE("rate limiter: a bucket holds the burst and refills at the rate on the clock it is given")
{
    dns::RateLimiter limiter(limit(10, 5));
    const std::uint64_t t0 = 1'000'000;
    CHECK(passes(limiter, "192.0.2.1", 8, t0) == 5);     // the burst, then nothing
    CHECK(passes(limiter, "192.0.2.1", 3, t0 + 99) == 0);  // 0.99 of a response back: not one yet
    CHECK(passes(limiter, "192.0.2.1", 3, t0 + 100) == 1);  // 100 ms at 10/s: one
    CHECK(passes(limiter, "192.0.2.1", 3, t0 + 350) == 2);  // 250 ms more: two and a half
    CHECK(passes(limiter, "192.0.2.1", 3, t0 + 400) == 1);  // the half kept, and half more
    // A long quiet spell fills the bucket to the burst, never beyond.
    CHECK(passes(limiter, "192.0.2.1", 20, t0 + 60'000) == 5);
    // A time that went backwards refills nothing.
    CHECK(passes(limiter, "192.0.2.1", 3, t0 + 30'000) == 0);
    // A steady 10/s over ten seconds: all of it, and nothing more.
    int passed = 0;
    for (std::uint64_t ms = 0; ms < 10'000; ms += 10) passed += passes(limiter, "192.0.2.1", 1, t0 + 120'000 + ms);
    CHECK(passed == 100 + 5 - 1);  // the first 5 from the full bucket, then one per 100 ms
}

TEST_CASE("rate limiter: burst 0 means one second's worth")
{
    dns::RateLimiter limiter(limit(200));
    CHECK(passes(limiter, "198.51.100.7", 300, 5000) == 200);
}

TEST_CASE("rate limiter: every slip-th limited answer slips (0 never and 1 always)")
{
    auto verdicts = [](std::uint32_t slip) {
        dns::RateLimiter limiter(limit(1, 1, slip));
        auto a = ip("203.0.113.9");
        std::string out;
        for (int i = 0; i < 7; ++i) {
            auto v = limiter.check(a, 42);
            out += v == Verdict::pass ? 'P' : v == Verdict::slip ? 'S' : 'D';
        }
        return out;
    };
    CHECK(verdicts(2) == "PDSDSDS");
    CHECK(verdicts(3) == "PDDSDDS");
    CHECK(verdicts(1) == "PSSSSSS");
    CHECK(verdicts(0) == "PDDDDDD");
}

TEST_CASE("rate limiter: sources share a bucket by prefix (IPv4 /24 and IPv6 /56 by default)")
{
    dns::RateLimiter limiter(limit(1, 2));
    CHECK(passes(limiter, "10.1.2.3", 2, 0) == 2);
    CHECK(passes(limiter, "10.1.2.250", 1, 0) == 0);  // same /24: spent
    CHECK(passes(limiter, "10.1.3.3", 2, 0) == 2);    // next /24: its own
    // The IPv4-mapped form of an address is that address (a dual-stack socket's IPv4 client).
    CHECK(passes(limiter, "::ffff:10.1.2.99", 1, 0) == 0);
    CHECK(passes(limiter, "2001:db8:0:1200::1", 2, 0) == 2);
    CHECK(passes(limiter, "2001:db8:0:12ff:ffff::5", 1, 0) == 0);  // same /56
    CHECK(passes(limiter, "2001:db8:0:1300::1", 2, 0) == 2);       // next /56

    auto s = limit(1, 1);
    s.ipv4_prefix = 32;
    s.ipv6_prefix = 64;
    dns::RateLimiter narrow(s);
    CHECK(passes(narrow, "10.1.2.3", 1, 0) == 1);
    CHECK(passes(narrow, "10.1.2.4", 1, 0) == 1);
    CHECK(passes(narrow, "2001:db8:0:1200::1", 1, 0) == 1);
    CHECK(passes(narrow, "2001:db8:0:1201::1", 1, 0) == 1);
    CHECK(passes(narrow, "2001:db8:0:1201::2", 1, 0) == 0);
}

TEST_CASE("rate limiter: the table is fixed whatever the number of sources and colliding prefixes share a bucket")
{
    auto s = limit(1, 3);
    s.table_size = 1;
    dns::RateLimiter one(s);
    CHECK(one.table_size() == 1);
    CHECK(passes(one, "10.0.0.1", 2, 0) == 2);
    CHECK(passes(one, "192.168.7.1", 2, 0) == 1);  // another prefix, the same (only) bucket
    CHECK(passes(one, "2001:db8::1", 1, 0) == 0);

    s.table_size = 4096;
    dns::RateLimiter bounded(s);
    auto bytes = bounded.table_bytes();
    CHECK(bytes <= 4096 * 16);
    // A million spoofed /24s: each new prefix lands in one of the 4096 buckets, and the ones
    // that land in a bucket another has spent are limited with it.
    int passed = 0;
    std::array<std::uint8_t, 4> a{};
    for (std::uint32_t n = 0; n < 1'000'000; ++n) {
        std::uint32_t addr = n << 8;
        a = {static_cast<std::uint8_t>(addr >> 24), static_cast<std::uint8_t>(addr >> 16),
             static_cast<std::uint8_t>(addr >> 8), 1};
        passed += bounded.check(a, 0) == Verdict::pass;
    }
    CHECK(bounded.table_bytes() == bytes);
    CHECK(passed == 4096 * 3);  // every bucket gave its burst, no more
}

TEST_CASE("rate limiter: exempt networks are never limited")
{
    auto s = limit(1, 1);
    s.exempt = {"127.0.0.0/8", "::1/128", "192.0.2.128/25"};
    dns::RateLimiter limiter(s);
    CHECK(passes(limiter, "127.0.0.2", 1000, 0) == 1000);
    CHECK(passes(limiter, "::1", 1000, 0) == 1000);
    CHECK(passes(limiter, "::ffff:127.0.0.1", 1000, 0) == 1000);
    CHECK(passes(limiter, "192.0.2.200", 1000, 0) == 1000);
    CHECK(passes(limiter, "192.0.2.100", 5, 0) == 1);  // same /24, outside the exempt /25
    CHECK(passes(limiter, "::2", 5, 0) == 1);
}

TEST_CASE("rate limit config: defaults and keys and range errors pointing into the file")
{
    auto defaults = conf::load_config_text("{}", "mesd.yaml");
    REQUIRE(defaults.ok());
    const auto& d = defaults.config.dns.rate_limit;
    CHECK(d.responses_per_second == 0);
    CHECK(d.slip == 1);
    CHECK(d.ipv4_prefix_length == 24);
    CHECK(d.ipv6_prefix_length == 56);
    CHECK(d.table_size == 393241);
    CHECK(d.exempt == std::vector<std::string>{"127.0.0.0/8", "::1/128"});

    auto set = conf::load_config_text("dns:\n  rateLimit:\n    responsesPerSecond: 200\n    burst: 50\n    slip: 3\n"
                                      "    ipv4PrefixLength: 32\n    ipv6PrefixLength: 64\n    tableSize: 1000\n"
                                      "    exempt: []\n",
                                      "mesd.yaml");
    REQUIRE(set.ok());
    const auto& l = set.config.dns.rate_limit;
    CHECK(l.responses_per_second == 200);
    CHECK(l.burst == 50);
    CHECK(l.slip == 3);  // not the default, so that reading it is what is checked
    CHECK(l.ipv4_prefix_length == 32);
    CHECK(l.ipv6_prefix_length == 64);
    CHECK(l.table_size == 1000);
    CHECK(l.exempt.empty());

    auto bad = conf::load_config_text("dns:\n  rateLimit:\n    slip: 101\n    tableSize: 0\n    exempt: [\"10.0.0.0/33\"]\n"
                                      "    window: 5\n",
                                      "mesd.yaml");
    REQUIRE(bad.errors.size() == 4);
    std::string all;
    for (const auto& e : bad.errors) all += e.format() + "\n";
    CHECK_THAT(all, Catch::Contains("mesd.yaml:3:11: dns.rateLimit.slip: must be between 0 and 100"));
    CHECK_THAT(all, Catch::Contains("mesd.yaml:4:16: dns.rateLimit.tableSize: must be between 1 and 16777216"));
    CHECK_THAT(all, Catch::Contains("mesd.yaml:5:14: dns.rateLimit.exempt[0]: must be a CIDR"));
    CHECK_THAT(all, Catch::Contains("dns.rateLimit.window"));
}

// ---- Through the real mesd ----------------------------------------------------------------------

namespace {

constexpr std::uint16_t type_a = 1, type_txt = 16;

// A query for `name`/`qtype` with `id`, and an OPT record (our size 1232, no options) if `edns`.
std::vector<std::uint8_t> query(const std::string& name, std::uint16_t qtype, std::uint16_t id, bool edns = false)
{
    auto q = raw_query(name);
    q[0] = static_cast<std::uint8_t>(id >> 8);
    q[1] = static_cast<std::uint8_t>(id & 0xff);
    q[q.size() - 3] = static_cast<std::uint8_t>(qtype);
    q[q.size() - 4] = static_cast<std::uint8_t>(qtype >> 8);
    if (edns) {
        q[11] = 1;
        q.insert(q.end(), {0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00});
    }
    return q;
}

// A UDP socket bound to `source` (any port): loopback has all of 127.0.0.0/8.
int udp_from(const char* source)
{
    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    int size = 1 << 20;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    REQUIRE(::inet_pton(AF_INET, source, &addr.sin_addr) == 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    return fd;
}

void send_query(int fd, int port, const std::vector<std::uint8_t>& q)
{
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<std::uint16_t>(port));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::sendto(fd, q.data(), q.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to) ==
            static_cast<ssize_t>(q.size()));
}

struct Tally {
    int full = 0;  // replies without TC
    int tc = 0;    // replies with TC
    std::chrono::steady_clock::time_point last;  // when the last reply came
    int total() const { return full + tc; }
};

// Reads the replies on `fd` until `deadline`, returning as soon as none is waiting after it.
void drain_until(int fd, Tally& tally, std::chrono::steady_clock::time_point deadline)
{
    while (true) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 0))) != 1) return;
        std::uint8_t buf[4096];
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n < 12) return;
        if (buf[2] & 0x02) ++tally.tc;
        else ++tally.full;
        tally.last = std::chrono::steady_clock::now();
    }
}

void drain(int fd, Tally& tally) { drain_until(fd, tally, std::chrono::steady_clock::now()); }

// Waits until `expected` replies came or nothing more did for half a second.
void collect(int fd, Tally& tally, int expected)
{
    while (tally.total() < expected) {
        int before = tally.total();
        drain_until(fd, tally, std::chrono::steady_clock::now() + std::chrono::milliseconds(500));
        if (tally.total() == before) return;
    }
}

std::uint64_t metric(const Mesd& mesd, const std::string& name)
{
    auto text = mesd.admin_get("/metrics");
    auto at = text.find("\n" + name + " ");
    REQUIRE(at != std::string::npos);
    return std::stoull(text.substr(at + name.size() + 2));
}

MesdOptions limited(const std::string& rate_limit)
{
    MesdOptions o;
    o.dns_section = "  forward:\n    enabled: false\n  rateLimit:\n" + rate_limit;
    return o;
}

}  // namespace

TEST_CASE("rrl: a flood from one source gets the rate plus every slip-th as TC while another prefix is unaffected")
{
    constexpr int rate = 100, burst = 20, rounds = 50, per_round = 12, flood = rounds * per_round;
    Fixture f(limited("    responsesPerSecond: 100\n    burst: 20\n    slip: 2\n    exempt: []\n"));
    int flooder = udp_from("127.0.0.2");
    int bystander = udp_from("127.0.1.2");  // another /24
    Tally from_flood, from_other;
    int other = 0;
    using Clock = std::chrono::steady_clock;
    auto start = Clock::now();
    // 12 queries every 10 ms (1200/s, twelve times the rate) for half a second, and one from
    // the bystander every 20 ms (half the rate), the replies read as they come.
    for (int round = 0; round < rounds; ++round) {
        for (int i = 0; i < per_round; ++i)
            send_query(flooder, f.mesd->dns_port(),
                       query("mes-http.mesh", type_a, static_cast<std::uint16_t>(round * per_round + i)));
        if (round % 2 == 0) {
            send_query(bystander, f.mesd->dns_port(), query("mes-http.mesh", type_a, static_cast<std::uint16_t>(round)));
            ++other;
        }
        drain(bystander, from_other);
        drain_until(flooder, from_flood, start + std::chrono::milliseconds(10 * (round + 1)));
    }
    auto sent_for = std::chrono::duration<double>(Clock::now() - start).count();
    collect(flooder, from_flood, flood);
    collect(bystander, from_other, other);
    auto lasted = std::chrono::duration<double>(from_flood.last - start).count();
    ::close(flooder);
    ::close(bystander);

    auto dropped = metric(*f.mesd, "mesd_dns_rate_limited_dropped_total");
    auto slipped = metric(*f.mesd, "mesd_dns_rate_limited_slipped_total");
    INFO("full " << from_flood.full << ", TC " << from_flood.tc << " of " << flood << " sent over " << sent_for
                 << " s, the last reply at " << lasted << " s; dropped " << dropped << ", slipped " << slipped);
    // The burst, then the rate while the flood lasted (a quarter second of slack for a
    // scheduler that held mesd back while the queries queued).
    CHECK(from_flood.full >= burst + static_cast<int>(rate * (sent_for - 0.25)));
    CHECK(from_flood.full <= burst + static_cast<int>(rate * lasted) + 2);
    int limited_answers = flood - from_flood.full;
    CHECK(static_cast<int>(dropped + slipped) == limited_answers);
    CHECK(static_cast<int>(slipped) == limited_answers / 2);  // every second limited answer
    CHECK(from_flood.tc == static_cast<int>(slipped));
    CHECK(metric(*f.mesd, "mesd_dns_truncated_total") == slipped);
    // The bystander shares nothing with the flooder: every one of its queries fully answered.
    CHECK(from_other.full == other);
    CHECK(from_other.tc == 0);
}

TEST_CASE("rrl: exempt sources are never limited (loopback by default)")
{
    auto flood_from = [](Fixture& f, const char* source, int count) {
        int fd = udp_from(source);
        Tally t;
        // 20 every 5 ms: far over the limit, and slow enough that no socket buffer overflows.
        auto start = std::chrono::steady_clock::now();
        for (int sent = 0, round = 1; sent < count; ++round) {
            for (int i = 0; i < 20 && sent < count; ++i, ++sent)
                send_query(fd, f.mesd->dns_port(), query("mes-http.mesh", type_a, static_cast<std::uint16_t>(sent)));
            drain_until(fd, t, start + std::chrono::milliseconds(5 * round));
        }
        collect(fd, t, count);
        ::close(fd);
        return t;
    };
    SECTION("the default exempt list holds 127.0.0.0/8")
    {
        Fixture f(limited("    responsesPerSecond: 10\n"));
        auto t = flood_from(f, "127.0.0.2", 300);
        CHECK(t.full == 300);
        CHECK(metric(*f.mesd, "mesd_dns_rate_limited_dropped_total") == 0);
        CHECK(metric(*f.mesd, "mesd_dns_rate_limited_slipped_total") == 0);
    }
    SECTION("an exempt /32 is not limited but its neighbour in the same /24 is")
    {
        Fixture f(limited("    responsesPerSecond: 10\n    slip: 0\n    exempt: [127.0.0.2/32]\n"));
        auto exempt = flood_from(f, "127.0.0.2", 300);
        CHECK(exempt.full == 300);
        auto neighbour = flood_from(f, "127.0.0.3", 100);
        CHECK(neighbour.tc == 0);  // slip 0: nothing slips
        CHECK(neighbour.full >= 10);
        CHECK(neighbour.full <= 10 + 10);  // the burst, and what a second's refill may add
        CHECK(metric(*f.mesd, "mesd_dns_rate_limited_dropped_total") == static_cast<std::uint64_t>(100 - neighbour.full));
    }
}

TEST_CASE("rrl: a slipped reply is header and question and OPT with TC while TCP still answers in full")
{
    Fixture f(limited("    responsesPerSecond: 1\n    burst: 1\n    slip: 1\n    exempt: []\n"));
    int fd = udp_from("127.0.0.2");
    auto exchange = [&](const std::vector<std::uint8_t>& q) {
        send_query(fd, f.mesd->dns_port(), q);
        std::vector<std::uint8_t> reply(4096);
        pollfd p{fd, POLLIN, 0};
        REQUIRE(::poll(&p, 1, 2000) == 1);
        auto n = ::recv(fd, reply.data(), reply.size(), 0);
        reply.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
        return reply;
    };
    auto count = [](const std::vector<std::uint8_t>& m, std::size_t at) { return (m[at] << 8) | m[at + 1]; };

    // The bucket's one answer: the TXT in full (general path, well over the query's size).
    auto txt = query("mes-big.mesh", type_txt, 0x1111, true);
    auto first = exchange(txt);
    REQUIRE(first.size() > 500);
    CHECK((first[2] & 0x02) == 0);
    CHECK(count(first, 6) > 0);

    // Then the general path slips: the question echoed, our OPT, nothing else.
    auto second = exchange(txt);
    REQUIRE(second.size() == txt.size());  // header, the question, an OPT of 11 bytes (as the query's)
    CHECK(second[0] == 0x11);
    CHECK(second[1] == 0x11);
    CHECK((second[2] & 0x80) != 0);  // QR
    CHECK((second[2] & 0x02) != 0);  // TC
    CHECK(count(second, 4) == 1);
    CHECK(count(second, 6) == 0);
    CHECK(count(second, 8) == 0);
    CHECK(count(second, 10) == 1);
    CHECK(std::equal(txt.begin() + 12, txt.end() - 11, second.begin() + 12));
    CHECK(second[txt.size() - 11 + 0] == 0);     // OPT owner: the root
    CHECK(second[txt.size() - 11 + 2] == 0x29);  // TYPE OPT

    // The fast path (A, no EDNS) slips the same way, in place: header and question only.
    auto a = query("mes-http.mesh", type_a, 0x2222);
    auto third = exchange(a);
    REQUIRE(third.size() == a.size());
    CHECK((third[2] & 0x82) == 0x82);
    CHECK(count(third, 6) == 0);
    CHECK(count(third, 10) == 0);
    ::close(fd);

    // TCP is never limited: the same TXT in full.
    int tcp = tcp_connect(f.mesd->dns_port());
    auto stream = framed({txt, txt});
    REQUIRE(::send(tcp, stream.data(), stream.size(), 0) == static_cast<ssize_t>(stream.size()));
    auto rcodes = read_replies(tcp, 2);
    ::close(tcp);
    CHECK(rcodes == std::vector<int>{0, 0});
    CHECK(f.short_answer("mes-big.mesh", "TXT", "+tcp").find("mes=") != std::string::npos);
    CHECK(metric(*f.mesd, "mesd_dns_rate_limited_slipped_total") == 2);
    CHECK(metric(*f.mesd, "mesd_dns_rate_limited_dropped_total") == 0);
}

TEST_CASE("rrl: a limited query that would be forwarded goes nowhere upstream and its slip is TC")
{
    std::atomic<int> asked{0};
    FakeUpstream upstream([&](int fd, const std::vector<std::uint8_t>& q, const sockaddr_in& from) {
        ++asked;
        auto r = a_reply(q, static_cast<std::uint16_t>((q[0] << 8) | q[1]), 9);
        ::sendto(fd, r.data(), r.size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
    });
    auto options = forwarding({upstream.port});
    options.dns_section += "  rateLimit:\n    responsesPerSecond: 1\n    burst: 1\n    slip: 2\n    exempt: []\n";
    Fixture f(options);
    int fd = udp_from("127.0.0.2");
    auto q = query("www.example.org", type_a, 0x3333);
    Tally t;
    for (int i = 0; i < 5; ++i) send_query(fd, f.mesd->dns_port(), q);
    collect(fd, t, 3);
    ::close(fd);
    // The bucket's one answer came from upstream; of the four limited, the 2nd and 4th slipped.
    CHECK(t.full == 1);
    CHECK(t.tc == 2);
    CHECK(asked == 1);
    CHECK(metric(*f.mesd, "mesd_dns_forwarded_total") == 1);
    CHECK(metric(*f.mesd, "mesd_dns_rate_limited_slipped_total") == 2);
    CHECK(metric(*f.mesd, "mesd_dns_rate_limited_dropped_total") == 2);
}
