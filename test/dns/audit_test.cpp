// The DNS side attacked through the real mesd binary: TCP clients that half-close or
// pipeline without reading, IPv4 clients of a dual-stack listener, a forwarding loop that
// mesd's loop option cannot see, clients asking the same question at once, a UDP flood for
// more than the outgoing link carries.
#include "test/support/dns.hpp"
#include "test/support/metrics.hpp"

#include <atomic>
#include <fstream>
#include <map>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

// AddressSanitizer keeps freed memory in quarantine (256 MB by default) and adds shadow
// memory, ThreadSanitizer maps shadow for every page touched and keeps an allocator cache
// per thread, so RSS says nothing about what mesd holds in a sanitizer build.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool rss_meaningful = false;
#else
constexpr bool rss_meaningful = true;
#endif

int rcode_of(const std::vector<std::uint8_t>& reply) { return reply.size() >= 12 ? reply[3] & 0x0f : -1; }

// An upstream that answers every query with 127.0.0.9 after `delay`.
FakeUpstream late_upstream(std::chrono::milliseconds delay)
{
    return FakeUpstream([delay](int fd, const std::vector<std::uint8_t>& q, const sockaddr_in& from) {
        std::this_thread::sleep_for(delay);
        auto r = a_reply(q, static_cast<std::uint16_t>((q[0] << 8) | q[1]), 9);
        ::sendto(fd, r.data(), r.size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
    });
}

std::vector<std::uint8_t> with_id(std::vector<std::uint8_t> q, std::uint16_t id)
{
    q[0] = static_cast<std::uint8_t>(id >> 8);
    q[1] = static_cast<std::uint8_t>(id & 0xff);
    return q;
}

}  // namespace

TEST_CASE("audit: a TCP client that half-closes after its queries still gets every answer with forwarded ones")
{
    // RFC 7766 section 6.2.4 / RFC 1035 4.2.2: a client may send its queries and shut down
    // its side (as `socat` and one-shot scripts do); the answers it is owed still go out.
    auto upstream = late_upstream(150ms);
    Fixture f(forwarding({upstream.port}, "1s"));
    int fd = tcp_connect(f.mesd->dns_port());
    auto stream = framed({with_id(raw_query("mes-http.mesh"), 1), with_id(raw_query("late.example"), 2)});
    REQUIRE(::send(fd, stream.data(), stream.size(), 0) == static_cast<ssize_t>(stream.size()));
    REQUIRE(::shutdown(fd, SHUT_WR) == 0);
    auto rcodes = read_replies(fd, 2);
    CHECK(rcodes == std::vector<int>{0, 0});
    ::close(fd);
    // The connection is closed once its answers are out, not left open.
    CHECK(eventually([&] {
        return metric(f.mesd->admin_get("/metrics"), "mesd_dns_forward_in_flight") == 0;
    }, 2s));
}

TEST_CASE("audit: IPv4 clients of a dual-stack listener are allowed to forward as their IPv4 address is")
{
    // On [::] an IPv4 client is seen as ::ffff:a.b.c.d (RFC 4291 2.5.5.2); the default allow
    // list names 127.0.0.0/8, which must cover it.
    auto upstream = late_upstream(0ms);
    auto options = forwarding({upstream.port}, "1s");
    options.dns_listen = "[::]:0";
    Fixture f(options);
    auto udp = udp_exchange(f.mesd->dns_port(), raw_query("mapped.example"), 2000ms);
    CHECK(rcode_of(udp) == 0);
    int fd = tcp_connect(f.mesd->dns_port());
    auto stream = framed({raw_query("mapped-tcp.example")});
    REQUIRE(::send(fd, stream.data(), stream.size(), 0) == static_cast<ssize_t>(stream.size()));
    CHECK(read_replies(fd, 1) == std::vector<int>{0});
    ::close(fd);
}

namespace {

// A forwarder that drops the additional section of every query, mesd's loop option with it,
// and asks `target` (mesd) for it: the loop that option cannot see.
struct StrippingForwarder {
    int listen_fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    int ask_fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    int port = 0;
    std::atomic<int> asked{0};
    std::jthread thread;

    // `target` is set by the test's thread once mesd runs, and read here.
    explicit StrippingForwarder(const std::atomic<int>& target)
    {
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ::bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
        ::bind(ask_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
        socklen_t len = sizeof addr;
        ::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len);
        port = ntohs(addr.sin_port);
        thread = std::jthread([this, &target](std::stop_token stop) {
            std::map<std::uint16_t, std::pair<std::uint16_t, sockaddr_in>> pending;
            std::uint16_t next_id = 1;
            while (!stop.stop_requested()) {
                pollfd p[2] = {{listen_fd, POLLIN, 0}, {ask_fd, POLLIN, 0}};
                if (::poll(p, 2, 100) <= 0) continue;
                std::vector<std::uint8_t> m(65535);
                sockaddr_in from{};
                socklen_t flen = sizeof from;
                if (p[0].revents & POLLIN) {
                    auto n = ::recvfrom(listen_fd, m.data(), m.size(), 0, reinterpret_cast<sockaddr*>(&from), &flen);
                    if (n < 12) continue;
                    std::size_t end = 12;
                    while (end < static_cast<std::size_t>(n) && m[end] != 0) end += 1u + m[end];
                    m.resize(std::min(end + 5, static_cast<std::size_t>(n)));
                    m[10] = m[11] = 0;
                    std::uint16_t id = next_id++;
                    pending[id] = {static_cast<std::uint16_t>((m[0] << 8) | m[1]), from};
                    m[0] = static_cast<std::uint8_t>(id >> 8);
                    m[1] = static_cast<std::uint8_t>(id & 0xff);
                    sockaddr_in to{};
                    to.sin_family = AF_INET;
                    to.sin_port = htons(static_cast<std::uint16_t>(target.load()));
                    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                    ++asked;
                    ::sendto(ask_fd, m.data(), m.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
                } else if (p[1].revents & POLLIN) {
                    auto n = ::recv(ask_fd, m.data(), m.size(), 0);
                    if (n < 12) continue;
                    auto it = pending.find(static_cast<std::uint16_t>((m[0] << 8) | m[1]));
                    if (it == pending.end()) continue;
                    m[0] = static_cast<std::uint8_t>(it->second.first >> 8);
                    m[1] = static_cast<std::uint8_t>(it->second.first & 0xff);
                    ::sendto(listen_fd, m.data(), static_cast<std::size_t>(n), 0,
                             reinterpret_cast<const sockaddr*>(&it->second.second), sizeof it->second.second);
                    pending.erase(it);
                }
            }
        });
    }
    ~StrippingForwarder()
    {
        thread.request_stop();
        thread.join();
        ::close(listen_fd);
        ::close(ask_fd);
    }
};

}  // namespace

TEST_CASE("audit: a loop through a forwarder that strips the loop option costs one more forward and not every slot")
{
    std::atomic<int> mesd_port = 0;
    StrippingForwarder stripper(mesd_port);
    auto options = forwarding({stripper.port}, "500ms");
    options.dns_section += "    maxWait: 800ms\n";
    Fixture f(options);
    mesd_port = f.mesd->dns_port();
    auto reply = udp_exchange(mesd_port, raw_query("loop.example"), 3000ms);
    CHECK(rcode_of(reply) == 2);
    auto metrics = f.mesd->admin_get("/metrics");
    INFO(metrics);
    // The client's query, and the one that came back joined it (4,096 forwards before).
    CHECK(metric(metrics, "mesd_dns_forwarded_total") == 1);
    CHECK(metric(metrics, "mesd_dns_forward_joined_total") == 1);
    CHECK(metric(metrics, "mesd_dns_forward_overload_total") == 0);
    CHECK(stripper.asked <= 2);
    CHECK(eventually([&] { return metric(f.mesd->admin_get("/metrics"), "mesd_dns_forward_in_flight") == 0; }, 2s));
}

TEST_CASE("audit: clients asking the same question at once get one upstream query and each its own ID and case")
{
    std::atomic<int> asked{0};
    FakeUpstream upstream([&](int fd, const std::vector<std::uint8_t>& q, const sockaddr_in& from) {
        ++asked;
        std::this_thread::sleep_for(200ms);
        auto r = a_reply(q, static_cast<std::uint16_t>((q[0] << 8) | q[1]), 9);
        ::sendto(fd, r.data(), r.size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
    });
    Fixture f(forwarding({upstream.port}, "1s"));
    auto first = with_id(raw_query("Same.Example"), 0x1111);
    auto second = with_id(raw_query("sAME.eXAMPLE"), 0x2222);
    std::vector<std::uint8_t> got_first;
    std::jthread asking([&] { got_first = udp_exchange(f.mesd->dns_port(), first, 2000ms); });
    std::this_thread::sleep_for(50ms);
    auto got_second = udp_exchange(f.mesd->dns_port(), second, 2000ms);
    asking.join();
    REQUIRE(got_first.size() == first.size() + 16);
    REQUIRE(got_second.size() == second.size() + 16);
    CHECK(std::equal(first.begin() + 12, first.end(), got_first.begin() + 12));  // the question as asked
    CHECK(std::equal(second.begin() + 12, second.end(), got_second.begin() + 12));
    CHECK((got_first[0] == 0x11 && got_first[1] == 0x11));
    CHECK((got_second[0] == 0x22 && got_second[1] == 0x22));
    CHECK(got_second.back() == 9);
    CHECK(asked == 1);
    CHECK(metric(f.mesd->admin_get("/metrics"), "mesd_dns_forward_joined_total") == 1);
}

TEST_CASE("audit: a TCP client that pipelines without reading cannot grow mesd's memory")
{
    Fixture f;
    long before = rss_kib(f.mesd->pid());
    // Many connections each sending queries as fast as mesd takes them and reading nothing:
    // 114 MB more before (1.8 MB a connection, within tcpIoTimeout), about 9 MB now.
    constexpr int connections = 64;
    std::vector<int> fds;
    for (int i = 0; i < connections; ++i) {
        int fd = tcp_connect(f.mesd->dns_port());
        int small = 4096;
        ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        fds.push_back(fd);
    }
    std::vector<std::vector<std::uint8_t>> queries(2000, raw_query("mes-tls.mesh"));
    auto chunk = framed(queries);
    long peak = before;
    auto end = std::chrono::steady_clock::now() + 1500ms;
    while (std::chrono::steady_clock::now() < end) {
        for (int fd : fds) {
            pollfd p{fd, POLLOUT, 0};
            if (::poll(&p, 1, 0) == 1 && (p.revents & POLLOUT))
                ::send(fd, chunk.data(), chunk.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        peak = std::max(peak, rss_kib(f.mesd->pid()));
        std::this_thread::sleep_for(1ms);
    }
    for (int fd : fds) ::close(fd);
    WARN("RSS before " << before << " KiB, peak " << peak << " KiB");
    if (rss_meaningful) CHECK(peak - before < 24 * 1024);
    CHECK(before > 0);
}

TEST_CASE("audit: a UDP flood for answers larger than the link carries leaves mesd's memory bounded")
{
    // Queries of 40 bytes for a 1,100-byte answer, in a namespace whose loopback carries
    // 8 Mbit/s: the replies cannot all leave. 18 MB more in 3 s before, growing with the
    // flood. A sanitizer build answers too slowly to fill the link (1,300 answers in 3 s), so
    // there only the answers are checked.
    Namespace ns("mesd-audit-udp");
    REQUIRE(ns.in({"/usr/sbin/tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "8mbit", "burst", "32kb", "latency",
                   "400ms"}).exit_code == 0);
    MesdOptions o;
    o.wrapper = ns.exec;
    Fixture f(o);
    f.dir.write("flood.py",
                "import socket, struct, sys, time\n"
                "q = struct.pack('>HHHHHH', 1, 0x0100, 1, 0, 0, 1) + b'\\x07mes-big\\x04mesh\\x00\\x00\\x10\\x00\\x01'"
                " + b'\\x00\\x00\\x29\\x10\\x00\\x00\\x00\\x00\\x00\\x00\\x00'\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "s.setblocking(False)\n"
                "end = time.time() + 3\n"
                "while time.time() < end:\n"
                "    try: s.sendto(q, ('127.0.0.1', int(sys.argv[1])))\n"
                "    except OSError: pass\n");
    long before = rss_kib(f.mesd->pid());
    std::vector<std::unique_ptr<Child>> flooders;
    for (int i = 0; i < 3; ++i)
        flooders.push_back(std::make_unique<Child>(ns.wrap({"/usr/bin/python3", (f.dir.path / "flood.py").string(), f.port}),
                                                   (f.dir.path / ("flood" + std::to_string(i) + ".out")).string()));
    long peak = before;
    auto end = std::chrono::steady_clock::now() + 3500ms;
    while (std::chrono::steady_clock::now() < end) {
        peak = std::max(peak, rss_kib(f.mesd->pid()));
        std::this_thread::sleep_for(20ms);
    }
    for (auto& c : flooders) c->wait();
    auto metrics = ns.in({"/usr/bin/curl", "-s", "http://127.0.0.1:" + std::to_string(f.mesd->admin_port()) + "/metrics"}).out;
    WARN("RSS before " << before << " KiB, peak " << peak << " KiB; answered " << metric(metrics, "mesd_dns_answered_total")
                       << ", dropped " << metric(metrics, "mesd_dns_dropped_total"));
    CHECK(metric(metrics, "mesd_dns_answered_total") > 500);
    if (rss_meaningful) {
        CHECK(metric(metrics, "mesd_dns_dropped_total") > 0);
        CHECK(peak - before < 6 * 1024);
    }
    CHECK(before > 0);
}

namespace {

// Sends `count` queries from `source` (an address of 127.0.0.0/8) and counts the replies
// that come within half a second of the last.
int answered_from(const char* source, int port, int count)
{
    int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    REQUIRE(::inet_pton(AF_INET, source, &addr.sin_addr) == 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<std::uint16_t>(port));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < count; ++i) {
        auto q = with_id(raw_query("mes-http.mesh"), static_cast<std::uint16_t>(i));
        ::sendto(fd, q.data(), q.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
    }
    int replies = 0;
    pollfd p{fd, POLLIN, 0};
    while (::poll(&p, 1, 500) == 1) {
        std::uint8_t buf[4096];
        if (::recv(fd, buf, sizeof buf, 0) >= 12) ++replies;
    }
    ::close(fd);
    return replies;
}

}  // namespace

TEST_CASE("audit: rate limiting on a dual-stack listener takes an IPv4 client by its IPv4 prefix and exemption")
{
    // Seen as ::ffff:127.0.0.2, a flooder must not be put in the /56 that holds every IPv4
    // client, nor an exempt IPv4 source be missed.
    MesdOptions o;
    o.dns_listen = "[::]:0";
    o.dns_section = "  forward:\n    enabled: false\n  rateLimit:\n    responsesPerSecond: 10\n    burst: 5\n"
                    "    slip: 0\n    exempt: [\"127.0.0.3/32\"]\n";
    Fixture f(o);
    int flooded = answered_from("127.0.0.2", f.mesd->dns_port(), 40);
    CHECK(flooded >= 5);
    CHECK(flooded <= 7);
    CHECK(answered_from("127.0.1.2", f.mesd->dns_port(), 4) == 4);  // another /24, its own bucket
    CHECK(answered_from("127.0.0.3", f.mesd->dns_port(), 40) == 40);  // exempt
}
